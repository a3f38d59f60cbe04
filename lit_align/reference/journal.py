"""A resumable ``lit-align precompute``: predictions are journaled to disk as they are made, so a run that is
interrupted (killed, preempted, out of memory) continues where it stopped instead of starting from zero.

The journal is the store's ``partial/`` directory: each process writes shards ``rank{r}-{id}.safetensors`` of up to
``every_n_batches`` batches of prediction columns (the sparse SAE feature columns included, concatenated pair by
pair) with the run's fingerprint (:func:`~lit_align.reference.fingerprint.run_fingerprint`) in their metadata. A shard
is written under a temporary name and renamed, so it is complete or absent; the buffer is also written when the
run stops on an exception (``Ctrl-C`` and ``SIGTERM`` included).

On (re)start every process reads the example keys of the shards made for this run's fingerprint (shards of
another reference, tokenizer, length setting or SAE, and unreadable ones, are ignored and later removed) and
:class:`~lit_align.reference.precompute.RemainingPairs` gives the predict loop only the pairs not journaled yet.
At the end :func:`~lit_align.reference.precompute.precompute` merges the journal into the store and removes it.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from safetensors import SafetensorError, safe_open
from torch import Tensor

from lit_align.files import save_safetensors

log = logging.getLogger(__name__)
JOURNAL_DIR = "partial"


class PrecomputeJournal(BasePredictionWriter):
    """Writes each process's predictions to ``{store_path}/partial/`` every ``every_n_batches`` batches.

    Args:
        store_path: the store's directory.
        every_n_batches: batches per shard: at most this many are computed again after a hard kill.
    """

    def __init__(self, store_path: str | Path, every_n_batches: int = 16) -> None:
        super().__init__(write_interval="batch")
        if not every_n_batches >= 1:
            raise ValueError(f"every_n_batches must be >= 1, got every_n_batches={every_n_batches}")
        self.directory = Path(store_path) / JOURNAL_DIR
        self.every_n_batches = every_n_batches
        self.fingerprint: dict[str, Any] | None = None
        self._buffer: list[dict[str, Tensor]] = []

    def start(self, fingerprint: dict[str, Any]) -> set[int]:
        """Begin a run with ``fingerprint``; returns the example keys already journaled for it."""
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as read back from a shard
        return {key for shard in self._shards(("example_key",)) for key in shard["example_key"].tolist()}

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: dict[str, Tensor],
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        self._buffer.append({name: value.detach().cpu() for name, value in prediction.items()})
        if len(self._buffer) >= self.every_n_batches:
            self.flush(trainer.global_rank)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush(trainer.global_rank)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.flush(trainer.global_rank)

    def flush(self, rank: int) -> None:
        """Write the buffered batches as one shard (complete or absent)."""
        if not self._buffer:
            return
        columns = {name: torch.cat([batch[name] for batch in self._buffer]).contiguous() for name in self._buffer[0]}
        self._buffer = []
        self.directory.mkdir(parents=True, exist_ok=True)
        save_safetensors(columns, self.directory / f"rank{rank}-{uuid.uuid4().hex}.safetensors",
                         metadata={"fingerprint": json.dumps(self.fingerprint)})

    def merged(self) -> dict[str, Tensor]:
        """Every journaled column of this run, shard after shard (keys may repeat: ``write_store`` dedupes)."""
        shards = list(self._shards())
        if not shards:
            raise RuntimeError(f"the precompute journal at {self.directory} holds no predictions of this run")
        return {name: torch.cat([shard[name] for shard in shards]) for name in shards[0]}

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _shards(self, names: tuple[str, ...] | None = None) -> list[dict[str, Tensor]]:
        """The columns ``names`` (default: all) of each readable shard made for this run's fingerprint."""
        shards, foreign = [], 0
        for file in sorted(self.directory.glob("*.safetensors")):
            try:
                with safe_open(str(file), framework="pt") as handle:
                    if json.loads((handle.metadata() or {}).get("fingerprint", "null")) != self.fingerprint:
                        foreign += 1
                        continue
                    shards.append({name: handle.get_tensor(name) for name in names or handle.keys()})
            except (SafetensorError, ValueError, OSError) as error:
                _warn("ignoring the unreadable precompute shard %s (%s); its pairs are computed again", file, error)
        if foreign:
            _warn("ignoring %d precompute shards in %s made for another reference, tokenizer, length setting or SAE",
                  foreign, self.directory)
        return shards


@rank_zero_only
def _warn(message: str, *args: Any) -> None:
    log.warning(message, *args)
