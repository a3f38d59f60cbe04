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


def default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW at lr 5e-6 without weight decay (:data:`WEIGHT_DECAY`)."""
    return torch.optim.AdamW(params, lr=5e-6, weight_decay=WEIGHT_DECAY)


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
