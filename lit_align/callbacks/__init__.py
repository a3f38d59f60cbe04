"""Lightning callbacks of lit-align: the non-finite step and divergence guards, the learning rate logged once a
step, the policy written for inference stacks and, re-exported from their home in :mod:`lit_align.reference`, the
journal of a resumable precompute and TR-DPO's reference updates."""

from lit_align.callbacks.divergence import DivergenceError, DivergenceGuard
from lit_align.callbacks.lr_monitor import LearningRateMonitor
from lit_align.callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from lit_align.callbacks.save_hf import SaveHFModel
from lit_align.reference.journal import PrecomputeJournal
from lit_align.reference.precompute import RemainingPairs
from lit_align.reference.sync import ReferenceSync

__all__ = ["DivergenceError", "DivergenceGuard", "LearningRateMonitor", "NonFiniteError", "NonFiniteGuard",
           "PrecomputeJournal", "ReferenceSync", "RemainingPairs", "SaveHFModel"]
