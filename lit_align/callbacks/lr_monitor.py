"""``LearningRateMonitor``: Lightning's, logging the learning rate once per optimizer step.

Lightning's logs it at the start of every training batch, so with gradient accumulation each optimizer step's
learning rate is written once per micro-batch (4 rows per step under ``accumulate_grad_batches: 4``), and an
optimizer without a scheduler is logged again at each epoch start. This one logs at the first micro-batch of each
optimizer step only, and at an epoch start only for a scheduler stepped per epoch.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor as LightningLearningRateMonitor


class LearningRateMonitor(LightningLearningRateMonitor):
    """Lightning's ``LearningRateMonitor`` (same arguments), once per optimizer step."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if batch_idx % trainer.accumulate_grad_batches == 0:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any, **kwargs: Any) -> None:
        if any(config.interval == "epoch" for config in trainer.lr_scheduler_configs):
            super().on_train_epoch_start(trainer, *args, **kwargs)
