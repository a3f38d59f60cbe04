"""The built-in controlled-generation task: a synthetic review corpus, a programmatic sentiment oracle, a tiny
SFT reference and oracle-labelled preference pairs, built in cached stages (see :mod:`pipeline`)."""

from lit_align.eval.generation import response_logps, sample_continuations
from lit_align.tasks.datamodule import ControlledTask
from lit_align.tasks.oracle import SentimentOracle, sentiment_score
from lit_align.tasks.pipeline import ControlledTaskSettings, TaskArtifacts, build_controlled_task
from lit_align.tasks.report import OracleRewardReport
from lit_align.tasks.sft import SFTSettings, TinyLlamaSettings

__all__ = [
    "ControlledTask",
    "ControlledTaskSettings",
    "OracleRewardReport",
    "SFTSettings",
    "SentimentOracle",
    "TaskArtifacts",
    "TinyLlamaSettings",
    "build_controlled_task",
    "response_logps",
    "sample_continuations",
    "sentiment_score",
]
