"""Evaluation of aligned policies: metrics (KL, entropy, distinct-n, win rate, calibration), scoring of sampled
responses, held-out pair statistics, and a callback that samples and logs them during training."""

from lit_align.eval.generation import ended_before, response_batch, sample_continuations, score_responses
from lit_align.eval.likelihood_calibration import LikelihoodCalibrationError
from lit_align.eval.metrics import (
    DistinctN,
    PreferenceCalibrationError,
    SequenceKL,
    TokenEntropy,
    WinRate,
    ngram_ids,
    token_entropy,
)
from lit_align.eval.pairs import PairStatistics, pair_statistics
from lit_align.eval.sampling_callback import SamplingEvaluation

__all__ = [
    "DistinctN",
    "LikelihoodCalibrationError",
    "PairStatistics",
    "PreferenceCalibrationError",
    "SamplingEvaluation",
    "SequenceKL",
    "TokenEntropy",
    "WinRate",
    "ended_before",
    "ngram_ids",
    "pair_statistics",
    "response_batch",
    "sample_continuations",
    "score_responses",
    "token_entropy",
]
