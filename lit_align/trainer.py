"""``AlignmentTrainer``: Lightning's Trainer plus ``precompute``, which fills the offline reference store."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse.typing import PositiveInt
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from lit_align.callbacks import DivergenceGuard, NonFiniteGuard
from lit_align.checkpoint_io import SafeCheckpointIO
from lit_align.reference.precompute import precompute

_NOT_RESUMABLE = "You're resuming from a checkpoint that ended before the epoch ended"


class AlignmentTrainer(L.Trainer):
    """A :class:`lightning.Trainer` with one more entry point, :meth:`precompute`, and three safe defaults:
    checkpoints written atomically and read weights-only (:class:`~lit_align.checkpoint_io.SafeCheckpointIO`,
    unless another ``CheckpointIO`` is given), optimizer steps with a non-finite loss or gradient skipped
    (:class:`~lit_align.callbacks.NonFiniteGuard`), and a run whose loss or gradient norm explodes stopped
    before the diverged step is applied or saved (:class:`~lit_align.callbacks.DivergenceGuard`); each guard
    unless ``callbacks`` hold one already."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if type(self.strategy.checkpoint_io) is TorchCheckpointIO:
            self.strategy.checkpoint_io = SafeCheckpointIO()
        if not any(isinstance(callback, NonFiniteGuard) for callback in self.callbacks):
            self.callbacks.insert(0, NonFiniteGuard())
        if not any(isinstance(callback, DivergenceGuard) for callback in self.callbacks):
            self.callbacks.insert(1, DivergenceGuard())

    def fit(
        self,
        model: L.LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: L.LightningDataModule | None = None,
        ckpt_path: str | Path | None = None,
        weights_only: bool | None = None,
    ) -> None:
        """Runs the full optimization routine.

        When the data module keeps its training order in checkpoints, as
        :class:`~lit_align.data.PreferenceDataModule` does, a mid-epoch resume is exact; Lightning's warning that
        the dataloader is not resumable (it looks at the DataLoader alone) does not apply and is not shown.

        Args:
            ckpt_path: the checkpoint to resume from (``"last"`` for the last one of this run's directory).
            weights_only: read the checkpoint weights-only (the default; ``false`` unpickles anything).
        """
        with warnings.catch_warnings():
            if hasattr(datamodule or train_dataloaders, "train_order"):
                warnings.filterwarnings("ignore", message=_NOT_RESUMABLE, category=PossibleUserWarning)
            super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)

    def precompute(
        self, model: L.LightningModule, datamodule: L.LightningDataModule, every_n_batches: PositiveInt = 16
    ) -> Path:
        """Fill the offline reference store named by model.reference with every pair's reference log-probs.

        The reference log-probs (and, for an objective that reads them, the pooled SAE features) of every train
        and validation pair are computed in one pass (Lightning's predict loop) and written to the model's
        :class:`~lit_align.reference.OfflineStore`, fingerprinted.

        The store's ``source`` (default: a frozen copy of the initial policy, or the adapter-disabled base for
        a LoRA policy) is the reference that runs, and the store's fingerprint records that model's weights; on
        several processes each computes its share of the pairs.
        Predictions are journaled to the store's ``partial/`` directory as they are made; once all are in, the
        first process merges them into one store and removes the journal. An interrupted run, started again,
        computes only the pairs not journaled yet (:mod:`lit_align.reference.precompute`, the one home of this).

        Args:
            model: an :class:`~lit_align.module.AlignmentModule` whose reference is an ``OfflineStore``.
            datamodule: the pairs to cover (its train and validation splits).
            every_n_batches: batches per journal shard: after a hard kill (``SIGKILL``), at most this many batches
                per process are computed again; any other interruption loses none.
        """
        return precompute(self, model, datamodule, every_n_batches)
