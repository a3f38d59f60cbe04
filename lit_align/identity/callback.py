"""``RunIdentity``: the run's manifest written into every checkpoint, and every process checked to be one run.

:class:`~lit_align.trainer.AlignmentTrainer` adds one and sets its manifest when ``fit`` starts. At setup every
process sends its manifest to all others; a process whose settings or data differ from the first process's is
refused on every process at once, in one line per differing key naming the processes, instead of a run that
trains on inconsistent data or hangs when one process stops early.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from lit_align.identity.checkpoints import IDENTITY, state_checksum
from lit_align.identity.manifest import Manifest, changes


class ProcessesDisagree(ValueError):
    """The processes of one run were started with different settings or data."""


class RunIdentity(Callback):
    """Writes ``{"manifest", "checksum"}`` into every checkpoint; refuses processes that are not one run."""

    def __init__(self) -> None:
        self.manifest: Manifest | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.manifest is None or trainer.world_size == 1 or not dist.is_available() or not dist.is_initialized():
            return
        manifests: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(manifests, self.manifest)
        differing: dict[str, list[int]] = {}
        for rank, manifest in enumerate(manifests[1:], start=1):
            for change in changes(manifests[0], manifest):
                differing.setdefault(str(change), []).append(rank)
        if differing:
            raise ProcessesDisagree("\n".join(f"processes of one run differ from process 0: {change} on process"
                                              f"{'es' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
                                              for change, ranks in differing.items()))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[IDENTITY] = {"manifest": self.manifest, "checksum": state_checksum(checkpoint.get("state_dict", {}))}
