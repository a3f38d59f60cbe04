"""Latent thoughts for a frozen base LLM: LTA-Thinker (Wang et al. 2025, https://arxiv.org/abs/2509.12875) and
its SoftCoT generator (Xu et al. 2025), with switches for the authors' behaviour and the fixed one."""

from lit_align.thinker.controls import NoGenerator
from lit_align.thinker.datamodule import ModularArithmeticData, ReasoningDataModule
from lit_align.thinker.encoding import ReasoningExample, ThoughtMarkers
from lit_align.thinker.generator import AssistantLM, BlockPrior, GaussianThoughts, ThoughtGenerator
from lit_align.thinker.losses import ThoughtLoss, alignment_kl, answer_nll, focus_infonce, variance_kl
from lit_align.thinker.module import LatentThoughtModule
from lit_align.thinker.self_consistency import SamplingSettings, SelfConsistency, extract_answer, majority_vote

__all__ = [
    "AssistantLM", "BlockPrior", "GaussianThoughts", "LatentThoughtModule", "ModularArithmeticData",
    "NoGenerator", "ReasoningDataModule", "ReasoningExample", "SamplingSettings", "SelfConsistency", "ThoughtGenerator",
    "ThoughtLoss", "ThoughtMarkers", "alignment_kl", "answer_nll", "extract_answer", "focus_infonce",
    "majority_vote", "variance_kl",
]
