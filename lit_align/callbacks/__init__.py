"""Lightning callbacks of lit-align: the non-finite step guard and the journal of a resumable precompute,
the policy written for inference stacks."""

from lit_align.callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from lit_align.callbacks.precompute_journal import PrecomputeJournal, RemainingPairs
from lit_align.callbacks.save_hf import SaveHFModel

__all__ = ["NonFiniteError", "NonFiniteGuard", "PrecomputeJournal", "RemainingPairs", "SaveHFModel"]
