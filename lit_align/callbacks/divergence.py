"""``DivergenceGuard``: stop a run whose loss or gradient norm explodes, before the diverged step is applied or saved.

A learning rate far too high (lr 1e2) makes the loss and the weights grow by orders of magnitude while every value
stays finite, so :class:`~lit_align.callbacks.NonFiniteGuard` sees nothing and the run trains to its end, writing
checkpoints of diverged weights. The guard compares, on every optimizer step, the step's loss (the mean over its
micro-batches) and its gradient norm (before clipping) with the run's starting level of each, the median of its
first ``warmup`` optimizer steps, and stops training with :class:`DivergenceError` when either exceeds ``factor``
times that level:

* the check runs in ``on_before_optimizer_step``: the optimizer has not applied the step, and no checkpoint of it
  is written (``ModelCheckpoint`` saves in ``on_train_batch_end``, later); the newest checkpoint holds the weights
  the diverged step started from;
* the decision is reduced across processes (all stop when one finds its value exploded), so a distributed run does
  not hang; each process judges its own loss and its own (local, possibly sharded) gradients;
* non-finite values are left to ``NonFiniteGuard`` (they are neither judged nor counted in the starting level);
* the starting level is part of the callback's state, so a resumed run keeps it.

Why a fixed starting level and not a running median: a running median follows a divergence that climbs step by
step (SFT at SGD lr 1e2 on the tests' tiny model: loss 6.2 to 9,299 in 13 steps, never 100 times its running
median), and it falls to nothing in a run that converges (f-DPO at AdamW lr 1: loss ln 2 to 0 and 1e-30, and
at step 23 a loss of 3e-19, 10^4 times the median before it), so it both misses divergence and stops runs that
converge. A loss or gradient norm 100 times what the run
started with is a divergence in every objective here (f-DPO starts at ln 2 = 0.69, so 69; SFT at its initial
token loss).
"""

from __future__ import annotations

import logging
import statistics
from typing import Any

import lightning as L
import torch
from jsonargparse.typing import PositiveFloat, PositiveInt
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from lit_align.callbacks.nonfinite import _gradients

log = logging.getLogger(__name__)

QUANTITIES = ("loss", "gradient norm")


class DivergenceError(RuntimeError, ValueError):
    """Training stopped: the loss or the gradient norm exploded. A ``ValueError`` too, so ``lit-align`` prints it
    as one line, ``error: <message>``, with exit status 1 (:func:`~lit_align.errors.run_entry`)."""


class DivergenceGuard(Callback):
    """Stop training when a step's loss or gradient norm exceeds ``factor`` times the run's starting level.

    :class:`~lit_align.trainer.AlignmentTrainer` adds one with the default settings unless its ``callbacks`` hold
    one already; configure it there (``trainer.callbacks``); ``factor: null`` switches the check off.

    Args:
        factor: how many times its starting level a loss or gradient norm may reach (> 1); ``None``: no check.
        warmup: optimizer steps whose values (their median) make the starting level of each quantity; later steps
            are judged against it, and so are these against the ones before them.
    """

    def __init__(self, factor: PositiveFloat | None = 100.0, warmup: PositiveInt = 1) -> None:
        if factor is not None and not factor > 1:
            raise ValueError(f"DivergenceGuard factor must be > 1 (or None to switch the check off), got {factor}")
        if not warmup >= 1:
            raise ValueError(f"DivergenceGuard warmup must be >= 1, got warmup={warmup}")
        self.factor = factor
        self.warmup = warmup
        self.start: dict[str, list[float]] = {name: [] for name in QUANTITIES}
        self._loss: Tensor | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        if self.factor is not None:  # the loss Lightning gives is already divided by the accumulation steps
            loss = loss.detach().float()
            self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.factor is None:
            return
        loss, self._loss = self._loss, None
        values = dict(zip(QUANTITIES, _read(loss, _gradients(optimizer)), strict=True))
        culprit = next((name for name in QUANTITIES if self._exploded(name, values[name])), None)
        if trainer.strategy.reduce_boolean_decision(culprit is not None, all=False):
            raise DivergenceError(self._message(trainer, optimizer, culprit, values))
        for name, value in values.items():
            if value is not None and 0 < value < float("inf") and len(self.start[name]) < self.warmup:
                self.start[name].append(value)

    def level(self, name: str) -> float | None:
        """The starting level of ``name`` (``"loss"`` or ``"gradient norm"``), once there is one."""
        return statistics.median(self.start[name]) if self.start[name] else None

    def _exploded(self, name: str, value: float | None) -> bool:
        level = self.level(name)
        return value is not None and level is not None and self.factor * level < value < float("inf")

    def _message(self, trainer: L.Trainer, optimizer: torch.optim.Optimizer, culprit: str | None,
                 values: dict[str, float | None]) -> str:
        step = trainer.global_step
        if culprit is None:
            what = f"step {step}: the loss or gradient norm exploded on another process"
        else:
            value, level = values[culprit], self.level(culprit)
            what = (f"step {step}: the {culprit} was {value:.4g}, {value / level:.0f} times its starting level "
                    f"{level:.4g} (DivergenceGuard factor {self.factor:g})")
        lr = float(optimizer.param_groups[0]["lr"])
        return (f"training diverged at {what}; stopped before the step was applied, so no checkpoint holds its "
                f"weights. Lower the learning rate (model.optimizer lr, now {lr:g}) or clip gradients "
                f"(trainer.gradient_clip_val, now {trainer.gradient_clip_val}); DivergenceGuard factor: null "
                "switches this check off")

    def state_dict(self) -> dict[str, Any]:
        return {"start": {name: list(values) for name, values in self.start.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start = {name: list(state_dict["start"].get(name, [])) for name in QUANTITIES}


def _read(loss: Tensor | None, gradients: list[Tensor]) -> tuple[float | None, float | None]:
    """The step's loss and gradient norm (of this process's gradients), read from the device in one transfer."""
    parts = [] if loss is None else [loss.reshape(())]
    if gradients:
        device = gradients[0].device
        norms = [torch.linalg.vector_norm(grad, dtype=torch.float32).to(device) for grad in gradients]
        parts.append(torch.linalg.vector_norm(torch.stack(norms)))
    if not parts:
        return None, None
    read = torch.stack([part.to(parts[0].device) for part in parts]).tolist()
    return (None if loss is None else read[0]), (read[-1] if gradients else None)
