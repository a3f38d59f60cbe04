"""``AlignmentTrainer``: Lightning's Trainer plus ``precompute``, which fills the offline reference store."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from lit_align.reference.store import OfflineStore, run_fingerprint, write_store


class AlignmentTrainer(L.Trainer):
    """A :class:`lightning.Trainer` with one more entry point, :meth:`precompute`."""

    def precompute(self, model: L.LightningModule, datamodule: L.LightningDataModule) -> Path:
        """Compute the reference log-probs of every train and validation pair in one pass (Lightning's predict
        loop) and write them to the model's :class:`~lit_align.reference.OfflineStore`, fingerprinted.

        The store's ``source`` (default: a frozen copy of the initial policy, or the adapter-disabled base for
        a LoRA policy) is the reference that runs; on several processes each computes its shard and the
        first process writes one store.
        """
        from lit_align.module import default_reference

        store = model.reference
        if not isinstance(store, OfflineStore):
            raise ValueError("precompute fills an offline store: set model.reference to OfflineStore(path=...)")
        model.reference = store.source or default_reference(model.policy_spec)
        try:
            batches = self.predict(model, datamodule=datamodule, return_predictions=True)
        finally:
            model.reference = store
        columns = _gather(self, batches)
        if self.is_global_zero:
            write_store(store.path, columns, run_fingerprint(model.policy, datamodule))
        self.strategy.barrier("precompute")
        return Path(store.path)


def _gather(trainer: L.Trainer, batches) -> dict[str, torch.Tensor]:
    """Concatenate this process's predictions, then those of every process."""
    flat = [batch for loader in batches for batch in loader] if batches and isinstance(batches[0], list) else batches
    local = {name: torch.cat([batch[name] for batch in flat]) for name in flat[0]}
    if trainer.world_size == 1:
        return local
    gathered = {name: trainer.strategy.all_gather(value) for name, value in local.items()}
    return {name: value.reshape(-1).cpu() for name, value in gathered.items()}
