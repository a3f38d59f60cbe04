"""Lightning callbacks of lit-align: the non-finite step guard and the journal of a resumable precompute."""

from lit_align.callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from lit_align.callbacks.precompute_journal import PrecomputeJournal, RemainingPairs

__all__ = ["NonFiniteError", "NonFiniteGuard", "PrecomputeJournal", "RemainingPairs"]
