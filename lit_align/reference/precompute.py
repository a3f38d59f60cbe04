"""``lit-align precompute``: the one home of filling an offline store — the columns of each batch, the predict
loop over the pairs not journaled yet, and the merge into the fingerprinted store.

One pass of Lightning's predict loop runs the store's ``source`` (an online reference) over every train and
validation pair; :meth:`AlignmentModule.predict_step <lit_align.module.AlignmentModule.predict_step>` returns
:func:`reference_columns`, which :class:`~lit_align.reference.journal.PrecomputeJournal` writes to disk as they
come; once all are in, the first process merges them with :func:`~lit_align.reference.store.write_store`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from lit_align.identity.manifest import run_manifest
from lit_align.reference.base import ReferenceProvider
from lit_align.reference.default import default_reference
from lit_align.reference.fingerprint import reference_fingerprint, run_fingerprint
from lit_align.reference.journal import PrecomputeJournal
from lit_align.reference.sparse import sparse_rows
from lit_align.reference.store import SIDES, OfflineStore, stored_pairs, write_store
from lit_align.reference.writer_lock import StoreWriterLock

if TYPE_CHECKING:
    from lit_align.sae.features import SAEFeatures


def reference_columns(reference: ReferenceProvider, batch: dict[str, Tensor],
                      features: SAEFeatures | None = None) -> dict[str, Tensor]:
    """A batch's store columns: per pair its key, the reference's summed log-probs and the response lengths of
    chosen and rejected, and, with ``features``, the reference's pooled SAE features (:func:`feature_columns`)."""
    chosen_logps, rejected_logps = reference.sequence_logps(batch).chunk(2)
    chosen_lengths, rejected_lengths = batch["response_mask"][:, 1:].sum(-1).float().chunk(2)
    columns = {"example_key": batch["example_key"], "chosen_logps": chosen_logps, "rejected_logps": rejected_logps,
               "chosen_lengths": chosen_lengths, "rejected_lengths": rejected_lengths}
    if features is not None:
        columns.update(feature_columns(reference.sae_features(batch, features)))
    return columns


def feature_columns(features: Tensor) -> dict[str, Tensor]:
    """The columns of a batch's pooled reference features ``(2B, d_sae)`` (chosen rows, then rejected), as
    :func:`write_store` reads them: per-pair non-zero counts, then the non-zeros' indices and values."""
    columns = {}
    for side, rows in zip(SIDES, features.chunk(2), strict=True):
        counts, indices, values = sparse_rows(rows)
        columns.update({f"{side}_feature_counts": counts, f"{side}_feature_indices": indices,
                        f"{side}_feature_values": values})
    return columns


def precompute(trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule,
               every_n_batches: int = 16) -> Path:
    """Fill ``model``'s :class:`OfflineStore` from its source over ``datamodule``'s train and validation pairs
    (resuming from the journal of an interrupted run); returns the store's directory. See
    :meth:`AlignmentTrainer.precompute <lit_align.trainer.AlignmentTrainer.precompute>`."""
    store = model.reference
    if not isinstance(store, OfflineStore):
        raise ValueError("precompute fills an offline store: set model.reference to OfflineStore(path=...)")
    journal, lock = PrecomputeJournal(store.path, every_n_batches), StoreWriterLock(store.path)
    source = store.source or default_reference(model.policy_spec)
    source.bind_policy_spec(model.policy_spec)
    remaining = RemainingPairs(datamodule, journal)
    with _serving(model, source), _with_callback(trainer, lock), _with_callback(trainer, journal), \
            _without_loggers(trainer):
        trainer.predict(model, datamodule=remaining, return_predictions=False)
    trainer.strategy.barrier("precompute_journal_written")
    try:
        if trainer.is_global_zero:
            _merge(store.path, journal, remaining.keys, run_manifest(trainer, model, datamodule))
    finally:
        lock.release()
    trainer.strategy.barrier("precompute")
    return Path(store.path)


def _merge(path: str | Path, journal: PrecomputeJournal, keys: set[int], manifest: dict | None = None) -> None:
    """Merge the journal into the store, once it holds every pair of the data (``keys``), recording the run's
    ``manifest`` beside its fingerprint; then remove the journal."""
    columns = journal.merged()
    missing = keys - set(columns["example_key"].tolist())
    if missing:
        raise ValueError(f"the precompute journal in {journal.directory} lacks {len(missing)} of the {len(keys)} "
                         "pairs this run computed (it was changed or removed while the run went on); nothing was "
                         "written: run lit-align precompute again, it resumes")
    previous = stored_pairs(path)
    written = write_store(path, columns, journal.fingerprint, manifest)
    journal.remove()
    replaced = "" if previous is None else f" (it replaced a store of {previous} pairs)"
    rank_zero_info(f"reference store written to {written.resolve()}: {len(keys)} pairs{replaced}")


class RemainingPairs(L.LightningDataModule):
    """``datamodule``'s prediction pairs less those already in ``journal``, for the predict loop of
    :func:`precompute`. Every process reads the journal, then all wait for each other (none writes before all
    have read), so they split the same remaining pairs."""

    def __init__(self, datamodule: L.LightningDataModule, journal: PrecomputeJournal) -> None:
        super().__init__()
        self.datamodule = datamodule
        self.journal = journal
        self.keys: set[int] = set()
        """The example keys of every pair to precompute, journaled or not (known once the loaders are made)."""
        self.prepare_data_per_node = datamodule.prepare_data_per_node

    def prepare_data(self) -> None:
        self.datamodule.trainer = self.trainer
        self.datamodule.prepare_data()

    def setup(self, stage: str) -> None:
        self.datamodule.trainer = self.trainer
        self.datamodule.setup(stage)

    def teardown(self, stage: str) -> None:
        self.datamodule.teardown(stage)

    def predict_dataloader(self) -> list[DataLoader]:
        module = self.trainer.lightning_module  # configured: its reference is the store's source, attached
        weights = reference_fingerprint(module.reference)
        done = self.journal.start(run_fingerprint(weights, self.datamodule, module.feature_extractor))
        self.trainer.strategy.barrier("precompute_journal_read")
        loaders = self.datamodule.predict_dataloader()
        loaders = loaders if isinstance(loaders, list) else [loaders]
        self.keys = {key for loader in loaders for key in loader.dataset["example_key"]}
        remaining = [_without(loader, done) for loader in loaders]
        return [loader for loader in remaining if len(loader.dataset)]


def _without(loader: DataLoader, done: set[int]) -> DataLoader:
    """``loader`` over the pairs whose example key is not in ``done``."""
    if not done:
        return loader
    keep = [row for row, key in enumerate(loader.dataset["example_key"]) if key not in done]
    return DataLoader(Subset(loader.dataset, keep), batch_size=loader.batch_size, collate_fn=loader.collate_fn,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory)


@contextmanager
def _serving(model: L.LightningModule, source: ReferenceProvider) -> Iterator[None]:
    """``model`` with ``source`` as its reference for the predict loop, its store restored afterwards."""
    store, model.reference = model.reference, source
    try:
        yield
    finally:
        model.reference = store


@contextmanager
def _with_callback(trainer: L.Trainer, callback: L.Callback) -> Iterator[None]:
    trainer.callbacks.append(callback)
    try:
        yield
    finally:
        trainer.callbacks.remove(callback)


@contextmanager
def _without_loggers(trainer: L.Trainer) -> Iterator[None]:
    """A precompute has no metrics: no ``lightning_logs/version_N`` for it."""
    loggers, trainer.loggers = trainer.loggers, []
    try:
        yield
    finally:
        trainer.loggers = loggers
