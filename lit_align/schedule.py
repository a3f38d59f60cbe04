"""The optimizer and the learning-rate schedule: AdamW without weight decay by default; linear warmup, then cosine,
linear or constant, sized from the run's length.

transformers' schedule functions do the arithmetic (``get_scheduler``: ``cosine``, ``linear``,
``constant_with_warmup``), so a run here follows the same curve as one of TRL's or the HF ``Trainer``'s with the
same settings. Lengths are optimizer steps, or fractions of ``trainer.estimated_stepping_batches`` (which already
accounts for ``max_steps``/``max_epochs``, gradient accumulation and the number of processes)::

    model:
      schedule:
        decay: cosine   # or linear, constant
        warmup: 0.1     # a fraction of the run (a float) or a number of steps (an int)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers import get_scheduler

WEIGHT_DECAY = 0.0
"""The one default weight decay (as TRL's ``DPOConfig`` and the DPO reference code): the shipped configs name it."""
TRANSFORMERS_NAMES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


@dataclass
class Schedule:
    """Linear warmup from 0 to the optimizer's ``lr``, then ``decay`` (cosine or linear to 0 at the end of
    ``length``; or constant), stepped every optimizer step."""

    decay: Literal["cosine", "linear", "constant"] = "cosine"
    """The shape after warmup."""
    warmup: int | float = 0.1
    """Warmup length: an int is optimizer steps, a float a fraction (0 to 1) of the schedule's length."""
    length: int | float = 1.0
    """The schedule's length (where cosine and linear reach 0): an int is optimizer steps, a float a fraction of
    ``trainer.estimated_stepping_batches``."""

    def __post_init__(self) -> None:
        for name in ("warmup", "length"):
            value = getattr(self, name)
            if value < 0 or (isinstance(value, float) and value > 1):
                raise ValueError(f"schedule.{name}={value}: give steps (an int >= 0) or a fraction (a float, 0 to 1)")
        if self.decay not in TRANSFORMERS_NAMES:
            raise ValueError(f"schedule.decay={self.decay!r}: choose one of {sorted(TRANSFORMERS_NAMES)}")

    def steps(self, stepping_batches: float) -> tuple[int, int]:
        """Warmup and total optimizer steps for a run of ``stepping_batches`` optimizer steps."""
        if not isinstance(self.length, int) and not math.isfinite(stepping_batches):
            raise ValueError("the schedule needs a finite run: set trainer.max_steps or max_epochs, or "
                             "schedule.length in steps")
        total = self.length if isinstance(self.length, int) else round(self.length * stepping_batches)
        warmup = self.warmup if isinstance(self.warmup, int) else round(self.warmup * total)
        if total < 1:
            raise ValueError(f"schedule.length={self.length} gives {total} optimizer steps: it needs at least one")
        return min(warmup, total), total

    def build(self, optimizer: Optimizer, stepping_batches: float) -> LambdaLR:
        warmup, total = self.steps(stepping_batches)
        return get_scheduler(TRANSFORMERS_NAMES[self.decay], optimizer, num_warmup_steps=warmup,
                             num_training_steps=total)


FUSED_DEVICES = ("cpu", "cuda")
"""Devices on which :class:`AdamW` runs torch's fused kernel (elsewhere torch picks its own implementation)."""


class AdamW(torch.optim.AdamW):
    """torch's AdamW, run by its fused kernel when every parameter is a floating-point tensor on a device of
    :data:`FUSED_DEVICES`: the same update (to float rounding, about 1e-8 after a few steps) in one kernel per device
    and dtype, instead of a dozen ops per parameter (3x faster on CPU for the bench's 15.7M model); elsewhere, or with
    ``fused=False``, torch's own choice (foreach on CUDA, one tensor at a time on CPU).

    A fused AdamW would take over a ``GradScaler``'s unscaling (``_step_supports_amp_scaling``); here the scaler
    unscales the gradients before the optimizer step as for any other optimizer, so the callbacks
    (:class:`~lit_align.callbacks.NonFiniteGuard`, the divergence guard) and gradient clipping see them unscaled.
    Usable in a config: ``class_path: lit_align.schedule.AdamW``.
    """

    def __init__(self, params: Iterable[Any], lr: float = 5e-6, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = WEIGHT_DECAY, fused: bool | None = None) -> None:
        params = list(params)
        fused = fusable(params) if fused is None else fused
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True if fused else None)
        self._step_supports_amp_scaling = False


def fusable(params: list[Any]) -> bool:
    """Whether every parameter (of a list of tensors or of parameter groups) can run torch's fused AdamW."""
    tensors = [p for entry in params for p in _group_tensors(entry)]
    return bool(tensors) and all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in tensors)


def _group_tensors(entry: Any) -> list[Any]:
    if not isinstance(entry, dict):
        return [entry]
    group = entry["params"]
    return [group] if isinstance(group, torch.Tensor) else list(group)


def default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW at lr 5e-6 without weight decay (:data:`WEIGHT_DECAY`), fused where torch has the kernel
    (:class:`AdamW`)."""
    return AdamW(params, lr=5e-6, weight_decay=WEIGHT_DECAY)


def optimization(params: Iterable[nn.Parameter], optimizer: Callable[..., Optimizer], schedule: Schedule | None,
                 scheduler: Callable[[Optimizer], Any] | None, stepping_batches: float) -> Any:
    """What ``configure_optimizers`` returns: the optimizer over ``params`` and, with ``schedule`` (or any
    ``scheduler`` factory), its learning-rate scheduler stepped every optimizer step."""
    built = optimizer(params)
    if schedule is not None:
        stepped = schedule.build(built, stepping_batches)
    elif scheduler is not None:
        stepped = scheduler(built)
    else:
        return built
    return {"optimizer": built, "lr_scheduler": {"scheduler": stepped, "interval": "step"}}
