"""``DivergenceGuard``: stop a run whose loss or gradient norm explodes while its weights leave their scale, before
the diverged step is applied or saved.

A learning rate far too high (lr 1e2) makes the loss and the weights grow by orders of magnitude while every value
stays finite, so :class:`~lit_align.callbacks.NonFiniteGuard` sees nothing and the run trains to its end, writing
checkpoints of diverged weights. The guard compares, on every optimizer step, the step's loss (the mean over its
micro-batches) and its gradient norm (before clipping) with the run's starting level of each, the median of its
first ``warmup`` optimizer steps. When either exceeds ``factor`` times that level, it is a divergence only if the
weights' norm (of the parameters the optimizer trains) has also grown past ``weights`` times its norm on the run's
first step; then training stops with :class:`DivergenceError`:

* the check runs in ``on_before_optimizer_step``: the optimizer has not applied the step, and no checkpoint of it
  is written (``ModelCheckpoint`` saves in ``on_train_batch_end``, later); the newest checkpoint holds the weights
  the diverged step started from;
* one transfer per step reads the loss and the gradient norm; the weights' norm is computed on the first step and
  then only on a step whose loss or gradient norm exploded;
* the decision is reduced across processes (all stop when one finds a divergence), so a distributed run does not
  hang; each process judges its own loss and its own (local, possibly sharded) gradients and weights;
* non-finite values are left to ``NonFiniteGuard`` (they are neither judged nor counted in the starting level);
* the starting levels are part of the callback's state, so a resumed run keeps them.

Why the weights too: how large a loss or gradient may legitimately get depends on the objective. f-DPO's forward
KL (f'(u) = -1/u) scores the chosen response -β·exp(-log-ratio), which grows exponentially once the policy lowers
that response's probability, and α-divergences (f'(u) = (1 - u^-α)/α) likewise. On the frontier's controlled task
(β 0.3, AdamW lr 5e-4, 122 steps) forward KL's loss reached 39 times its start and its gradient norm 2,228 times,
α 0.7's 100,069 and 11 million times, while the weights' norm stayed within 0.994 and 1.0005 times its start and
the runs trained to sensible results; a rule on the loss and gradient norm alone stopped forward KL and every α
within 60 steps. The weights are what a divergence runs away with, whatever the objective: SFT at SGD lr 1e2 has
grown their norm 7.5 times after one step and 10.5 times after two (loss 6.2 to 9,299 in 13 steps), and AdamW at
lr 1e2 1,410 times after one (every weight moves by about 100).

Why a fixed starting level and not a running median: a running median follows a divergence that climbs step by
step (the SFT run above is never 100 times its running median), and it falls to nothing in a run that converges
(f-DPO at AdamW lr 1: loss ln 2 to 0 and 1e-30, and at step 23 a loss of 3e-19, 10^4 times the median before it),
so it both misses divergence and stops runs that converge.
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

from lit_align.callbacks.nonfinite import _gradients, _local

log = logging.getLogger(__name__)

QUANTITIES = ("loss", "gradient norm")
WEIGHTS = "weight norm"


class DivergenceError(RuntimeError, ValueError):
    """Training stopped: the loss or the gradient norm exploded. A ``ValueError`` too, so ``lit-align`` prints it
    as one line, ``error: <message>``, with exit status 1 (:func:`~lit_align.errors.run_entry`)."""


class DivergenceGuard(Callback):
    """Stop training when a step's loss or gradient norm exceeds ``factor`` times the run's starting level while the
    weights' norm exceeds ``weights`` times its start.

    An exploded loss or gradient norm with the weights near their starting norm is left to train on: some
    objectives' losses and gradients are legitimately that large (f-DPO's forward KL and α-divergences, whose
    scores grow exponentially in the log-ratio; AdamW bounds each update), while a diverging run's weights grow by
    orders of magnitude.

    :class:`~lit_align.trainer.AlignmentTrainer` adds one with the default settings unless its ``callbacks`` hold
    one already; configure it there (``trainer.callbacks``); ``factor: null`` switches the check off.

    Args:
        factor: how many times its starting level a loss or gradient norm may reach (> 1); ``None``: no check.
        warmup: optimizer steps whose values (their median) make the starting level of each quantity; later steps
            are judged against it, and so are these against the ones before them.
        weights: how many times its norm on the first step the weights' norm must exceed for an exploded loss or
            gradient norm to stop training (> 1); ``None``: an exploded loss or gradient norm stops it alone.
    """

    def __init__(self, factor: PositiveFloat | None = 100.0, warmup: PositiveInt = 1,
                 weights: PositiveFloat | None = 2.0) -> None:
        if factor is not None and not factor > 1:
            raise ValueError(f"DivergenceGuard factor must be > 1 (or None to switch the check off), got {factor}")
        if not warmup >= 1:
            raise ValueError(f"DivergenceGuard warmup must be >= 1, got warmup={warmup}")
        if weights is not None and not weights > 1:
            raise ValueError(f"DivergenceGuard weights must be > 1 (or None to judge the loss and gradient norm "
                             f"alone), got {weights}")
        self.factor = factor
        self.warmup = warmup
        self.weights = weights
        self.start: dict[str, list[float]] = {name: [] for name in (*QUANTITIES, WEIGHTS)}
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
        first = self.weights is not None and not self.start[WEIGHTS]
        weights = _norm(_parameters(optimizer)) if first else None  # read with the others: one transfer
        read = _read(loss, _norm(_gradients(optimizer)), weights)
        values: dict[str, float | None] = dict(zip((*QUANTITIES, WEIGHTS), read, strict=True))
        culprit = next((name for name in QUANTITIES if self._exploded(name, values[name])), None)
        if culprit is not None and self.weights is not None:
            if not first:  # the weights' norm is read only on a step whose loss or gradient norm exploded
                values[WEIGHTS] = _read(_norm(_parameters(optimizer)))[0]
            culprit = culprit if self._grown(values[WEIGHTS]) else None
        if trainer.strategy.reduce_boolean_decision(culprit is not None, all=False):
            raise DivergenceError(self._message(trainer, optimizer, culprit, values))
        for name in (*QUANTITIES, WEIGHTS) if first else QUANTITIES:
            value = values[name]
            if value is not None and 0 < value < float("inf") and len(self.start[name]) < self.warmup:
                self.start[name].append(value)

    def level(self, name: str) -> float | None:
        """The starting level of ``name`` (``"loss"``, ``"gradient norm"`` or ``"weight norm"``, the latter the
        weights' norm on the first step), once there is one."""
        return statistics.median(self.start[name]) if self.start[name] else None

    def _exploded(self, name: str, value: float | None) -> bool:
        level = self.level(name)
        return value is not None and level is not None and self.factor * level < value < float("inf")

    def _grown(self, value: float | None) -> bool:
        """Whether the weights' norm has left its scale; without a starting norm (none positive and finite on this
        process) the loss and gradient norm are judged alone."""
        level = self.level(WEIGHTS)
        return level is None or (value is not None and not value <= self.weights * level)  # a NaN norm has grown

    def _message(self, trainer: L.Trainer, optimizer: torch.optim.Optimizer, culprit: str | None,
                 values: dict[str, float | None]) -> str:
        step = trainer.global_step
        settings = f"DivergenceGuard factor {self.factor:g}" + ("" if self.weights is None else
                                                                 f", weights {self.weights:g}")
        if culprit is None:
            what = f"step {step}: the loss or gradient norm exploded on another process"
        else:
            value, level = values[culprit], self.level(culprit)
            what = (f"step {step}: the {culprit} was {value:.4g}, {value / level:.0f} times its starting level "
                    f"{level:.4g}")
            weights, start = values[WEIGHTS], self.level(WEIGHTS)
            if self.weights is not None and weights is not None and start is not None:
                what += f", and the weights' norm {weights:.4g}, {weights / start:.3g} times its start {start:.4g}"
        lr = float(optimizer.param_groups[0]["lr"])
        return (f"training diverged at {what} ({settings}); stopped before the step was applied, so no checkpoint "
                f"holds its weights. Lower the learning rate (model.optimizer lr, now {lr:g}) or clip gradients "
                f"(trainer.gradient_clip_val, now {trainer.gradient_clip_val}); DivergenceGuard factor: null "
                "switches this check off")

    def state_dict(self) -> dict[str, Any]:
        return {"start": {name: list(values) for name, values in self.start.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start = {name: list(state_dict["start"].get(name, [])) for name in (*QUANTITIES, WEIGHTS)}


def _parameters(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """This process's part of the weights ``optimizer`` trains."""
    return [_local(p.detach()) for group in optimizer.param_groups for p in group["params"]]


def _norm(tensors: list[Tensor]) -> Tensor | None:
    """The total (float32) norm of ``tensors`` as a 0-d tensor on the first one's device; ``None`` for none."""
    if not tensors:
        return None
    device = tensors[0].device
    norms = [torch.linalg.vector_norm(tensor, dtype=torch.float32).to(device) for tensor in tensors]
    return torch.linalg.vector_norm(torch.stack(norms))


def _read(*parts: Tensor | None) -> list[float | None]:
    """The values of the 0-d tensors ``parts`` (``None`` kept), read from the device in one transfer."""
    present = [part.reshape(()) for part in parts if part is not None]
    if not present:
        return [None] * len(parts)
    values = iter(torch.stack([part.to(present[0].device) for part in present]).tolist())
    return [None if part is None else next(values) for part in parts]
