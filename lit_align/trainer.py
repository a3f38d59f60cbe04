"""``AlignmentTrainer``: Lightning's Trainer plus ``precompute``, which fills the offline reference store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse.typing import PositiveInt
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_align.callbacks import NonFiniteGuard, PrecomputeJournal, RemainingPairs
from lit_align.checkpoint_io import SafeCheckpointIO
from lit_align.reference.store import OfflineStore, write_store


class AlignmentTrainer(L.Trainer):
    """A :class:`lightning.Trainer` with one more entry point, :meth:`precompute`, and two safe defaults:
    checkpoints written atomically and read weights-only (:class:`~lit_align.checkpoint_io.SafeCheckpointIO`,
    unless another ``CheckpointIO`` is given), and optimizer steps with a non-finite loss or gradient skipped
    (:class:`~lit_align.callbacks.NonFiniteGuard`, unless ``callbacks`` hold one already)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(self.strategy.checkpoint_io) is TorchCheckpointIO:
            self.strategy.checkpoint_io = SafeCheckpointIO()
        if not any(isinstance(callback, NonFiniteGuard) for callback in self.callbacks):
            self.callbacks.insert(0, NonFiniteGuard())

    def precompute(
        self, model: L.LightningModule, datamodule: L.LightningDataModule, every_n_batches: PositiveInt = 16
    ) -> Path:
        """Compute the reference log-probs (and, for an objective that reads them, the pooled SAE features) of
        every train and validation pair in one pass (Lightning's predict loop) and write them to the model's
        :class:`~lit_align.reference.OfflineStore`, fingerprinted.

        The store's ``source`` (default: a frozen copy of the initial policy, or the adapter-disabled base for
        a LoRA policy) is the reference that runs; on several processes each computes its share of the pairs.
        Predictions are journaled to the store's ``partial/`` directory as they are made; once all are in, the
        first process merges them into one store and removes the journal. An interrupted run, started again,
        computes only the pairs not journaled yet (:mod:`lit_align.callbacks.precompute_journal`).

        Args:
            model: an :class:`~lit_align.module.AlignmentModule` whose reference is an ``OfflineStore``.
            datamodule: the pairs to cover (its train and validation splits).
            every_n_batches: batches per journal shard: after a hard kill (``SIGKILL``), at most this many batches
                per process are computed again; any other interruption loses none.
        """
        from lit_align.module import default_reference

        store = model.reference
        if not isinstance(store, OfflineStore):
            raise ValueError("precompute fills an offline store: set model.reference to OfflineStore(path=...)")
        journal = PrecomputeJournal(store.path, every_n_batches)
        model.reference = store.source or default_reference(model.policy_spec)
        self.callbacks.append(journal)
        try:
            self.predict(model, datamodule=RemainingPairs(datamodule, journal), return_predictions=False)
        finally:
            model.reference = store
            self.callbacks.remove(journal)
        self.strategy.barrier("precompute_journal_written")
        if self.is_global_zero:
            write_store(store.path, journal.merged(), journal.fingerprint)
            journal.remove()
        self.strategy.barrier("precompute")
        return Path(store.path)
