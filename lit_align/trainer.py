"""``AlignmentTrainer``: Lightning's Trainer plus ``precompute``, which fills the offline reference store."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from jsonargparse.typing import PositiveInt
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from lit_align.atomic_dir import put_in_place
from lit_align.callbacks import DivergenceGuard, NonFiniteGuard
from lit_align.checkpoint_io import SafeCheckpointIO
from lit_align.files import partial_path
from lit_align.identity import ResumeRefused, RunIdentity, checkpoint_to_resume, run_manifest
from lit_align.reference.precompute import precompute
from lit_align.surprises import warn_of_surprises

SHARDED = (FSDPStrategy, ModelParallelStrategy)  # the strategies that read a sharded checkpoint directory
START_FILES = ("config.yaml", "hparams.yaml", "metrics.csv")  # what a run writes before its first step
_NOT_RESUMABLE = "You're resuming from a checkpoint that ended before the epoch ended"


class AlignmentTrainer(L.Trainer):
    """A :class:`lightning.Trainer` with one more entry point, :meth:`precompute`, and three safe defaults:
    checkpoints written atomically and read weights-only (:class:`~lit_align.checkpoint_io.SafeCheckpointIO`,
    unless another ``CheckpointIO`` is given), optimizer steps with a non-finite loss or gradient skipped
    (:class:`~lit_align.callbacks.NonFiniteGuard`), and a run whose loss or gradient norm explodes while its
    weights leave their scale stopped before the diverged step is applied or saved
    (:class:`~lit_align.callbacks.DivergenceGuard`); each guard unless ``callbacks`` hold one already."""

    def __init__(self, *args: Any, resume_allows: list[str] | None = None, **kwargs: Any) -> None:
        """Lightning's ``Trainer`` arguments, and:

        Args:
            resume_allows: settings a resume may change although they alter what a step computes (e.g.
                ``[model.optimizer.lr]`` to lower the learning rate on purpose); each change is logged.
        """
        super().__init__(*args, **kwargs)
        self.resume_allows = list(resume_allows or [])
        self.run_identity = next((c for c in self.callbacks if isinstance(c, RunIdentity)), None) or RunIdentity()
        if self.run_identity not in self.callbacks:
            self.callbacks.append(self.run_identity)
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
            ckpt_path: the checkpoint to resume from: ``"last"``, the newest checkpoint of this run (its settings and
                data) under ``default_root_dir``, or a path; either is compared with this run's settings and its
                weights with their checksum before anything is restored (:mod:`lit_align.identity.resume`).
            weights_only: read the checkpoint weights-only (the default; ``false`` unpickles anything).
        """
        warn_of_surprises(self, model)
        self.run_identity.manifest = run_manifest(self, model, datamodule)
        root = self.default_root_dir
        ckpt_path = checkpoint_to_resume(ckpt_path, self.run_identity.manifest, root, self.resume_allows)
        if ckpt_path is not None and Path(ckpt_path).is_dir() and not isinstance(self.strategy, SHARDED):
            raise ResumeRefused(f"{ckpt_path} is a sharded checkpoint (a directory of FSDP shards), which "
                                f"{type(self.strategy).__name__} cannot read: resume it with the strategy that wrote "
                                "it (e.g. --config configs/overlays/fsdp2.yaml), or export it with lit-align export "
                                "and start from the exported model")
        if ckpt_path is not None:
            continue_log_dir(self.loggers, Path(ckpt_path))
        with warnings.catch_warnings():
            if hasattr(datamodule or train_dataloaders, "train_order"):
                warnings.filterwarnings("ignore", message=_NOT_RESUMABLE, category=PossibleUserWarning)
            new_log_dir = self.log_dir is not None and not Path(self.log_dir).exists()
            try:
                super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)
            except BaseException:
                if new_log_dir:
                    self._remove_log_dir_of_a_failed_start()
                raise

    def _remove_log_dir_of_a_failed_start(self) -> None:
        """A run that failed before its first step leaves no ``version_N`` (made by it) holding only its config and
        an empty event file: the next run then takes that number again."""
        log_dir = Path(self.log_dir) if self.is_global_zero and self.global_step == 0 else None
        if log_dir is not None and log_dir.is_dir() and log_dir != Path(self.default_root_dir) and all(
                path.name in START_FILES or path.name.startswith("events.out.tfevents") for path in log_dir.iterdir()):
            shutil.rmtree(log_dir)

    def save_checkpoint(self, filepath: str | Path, weights_only: bool = False, storage_options: Any = None) -> None:
        """Lightning's ``save_checkpoint``, written beside and put in place whole: a sharded checkpoint (a directory
        that every process writes its shards into) goes to a hidden sibling first and replaces ``filepath`` in one
        swap once all processes have written, so a run killed while saving leaves the previous checkpoint whole,
        never new shards beside old metadata. Remote paths are Lightning's."""
        if "://" in str(filepath):
            super().save_checkpoint(filepath, weights_only, storage_options)
            return
        target = Path(filepath)
        staging = partial_path(target)
        if self.is_global_zero and staging.exists():  # left by a run killed while saving
            shutil.rmtree(staging) if staging.is_dir() else staging.unlink()
        self.strategy.barrier("checkpoint_staging")
        super().save_checkpoint(staging, weights_only, storage_options)  # ends with a barrier
        if self.is_global_zero:
            put_in_place(staging, target)
        self.strategy.barrier("checkpoint_in_place")

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


def continue_log_dir(loggers: list, checkpoint: Path) -> None:
    """A run resumed from ``<save_dir>/<name>/version_N/checkpoints/...`` keeps logging into ``version_N`` (a
    TensorBoard logger, whose event files accumulate; one given a version keeps it). Lightning's loggers take their
    version when built and offer no public way to set it after: the one private attribute written here."""
    for logger in loggers:
        version = checkpoint.resolve().parent.parent
        if isinstance(logger, TensorBoardLogger) and logger._version is None and version.name.startswith("version_") \
                and version.parent == Path(logger.root_dir).resolve() and version.name[8:].isdigit():
            logger._version = int(version.name[8:])
