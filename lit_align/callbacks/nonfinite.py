"""``NonFiniteGuard``: skip an optimizer step whose loss or gradients are not finite, count it, and stop after
too many in a row.

A NaN or inf loss (a log of zero, an overflowing exponent, a corrupted batch) would otherwise poison the weights
and every step after it. The guard runs on every optimizer step, after backward and before the optimizer:

* the loss of each micro-batch is checked in ``on_before_backward`` (so a gradient-accumulation step is skipped
  when any of its micro-batches' loss is non-finite), and the gradients in ``on_before_optimizer_step``, through
  one fused scalar, their total norm (``torch.nn.utils.get_total_norm``: one reduction per gradient, which is
  NaN or inf when any gradient holds a NaN or an inf), read from the device once with the loss's flag; only when
  that norm is not finite is each gradient checked on its own, so a norm that overflowed while every gradient is
  finite (squares beyond the dtype's range: values from about 1e19 in fp32) does not skip the step;
* the decision is reduced across processes (a step is skipped on all of them when it is bad on any), so a
  distributed run stays in step;
* a bad step's gradients are set to ``None``: the optimizer's ``step`` then leaves the weights and its own state
  (moments, step count) untouched, weight decay included; gradient clipping sees no gradient;
* the number of skipped steps is logged as ``train/skipped_steps`` on every optimizer step, each skip is logged
  as a warning naming the step and what was non-finite, and after ``max_consecutive`` bad steps in a row
  :class:`NonFiniteError` stops training.

With a ``GradScaler`` (``precision="16-mixed"``) the gradients are left to the scaler, which already skips steps
whose gradients overflowed and lowers its scale; only the loss is checked. The learning-rate scheduler and the
global step still advance on a skipped step.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from jsonargparse.typing import PositiveInt
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.distributed.tensor import DTensor

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError, ValueError):
    """Training stopped: the loss or the gradients were non-finite on too many optimizer steps in a row. A
    ``ValueError`` too, so ``lit-align`` prints it as one line, ``error: <message>``, with exit status 1."""


class NonFiniteGuard(Callback):
    """Skip and count optimizer steps with a non-finite loss or gradient; stop after ``max_consecutive`` in a row.

    :class:`~lit_align.trainer.AlignmentTrainer` adds one with the default setting unless its ``callbacks``
    hold one already; configure it there (``trainer.callbacks``) to change ``max_consecutive``.

    Args:
        max_consecutive: bad optimizer steps in a row that stop training with :class:`NonFiniteError`.
    """

    def __init__(self, max_consecutive: PositiveInt = 3) -> None:
        if not max_consecutive >= 1:
            raise ValueError(f"max_consecutive must be >= 1, got max_consecutive={max_consecutive}")
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self._bad_loss: Tensor | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        bad_loss, self._bad_loss = self._bad_loss, None
        check_grads = getattr(trainer.precision_plugin, "scaler", None) is None
        grads = _gradients(optimizer) if check_grads else []
        local = self._bad_step(bad_loss, grads)
        if trainer.strategy.reduce_boolean_decision(local, all=False):
            self._skip(trainer, pl_module, optimizer, bad_loss is not None and bool(bad_loss))
        else:
            self.consecutive = 0
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)

    def _bad_step(self, bad_loss: Tensor | None, grads: list[Tensor]) -> bool:
        """Whether this process's step is bad: its loss flag or'ed with :meth:`suspect` of its gradients, read in
        one transfer; a suspect step whose loss was finite is confirmed gradient by gradient."""
        flags = [] if bad_loss is None else [bad_loss.reshape(())]
        if grads:
            flags.append(self.suspect(grads))
        if not flags or not bool(torch.stack([flag.to(flags[-1].device) for flag in flags]).any()):
            return False
        if bad_loss is not None and bool(bad_loss):
            return True
        return any(not bool(torch.isfinite(grad).all()) for grad in grads)

    def suspect(self, grads: list[Tensor]) -> Tensor:
        """A 0-d bool tensor, true when a gradient may be non-finite: their total norm is not finite (it is exactly
        when a gradient is, except that the norm of huge finite values may overflow, which the caller rules out)."""
        return torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False).isfinite().logical_not()

    def _skip(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer,
              bad_loss: bool) -> None:
        """Drop the step's gradients, count it, and stop after ``max_consecutive`` in a row."""
        culprits = _nonfinite_gradient_names(pl_module)
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                parameter.grad = None
        self.skipped += 1
        self.consecutive += 1
        what = describe(bad_loss, culprits)
        if trainer.is_global_zero:
            log.warning("step %d: %s; optimizer step skipped (%d in a row, %d in all)",
                        trainer.global_step, what, self.consecutive, self.skipped)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"{self.consecutive} optimizer steps in a row had a non-finite loss or gradient (the last, step "
                f"{trainer.global_step}: {what}; {self.skipped} skipped in all); training stopped. Lower the "
                "learning rate, check the data and the objective's settings, or raise NonFiniteGuard.max_consecutive"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = state_dict["skipped"]
        self.consecutive = state_dict["consecutive"]


def describe(bad_loss: bool, culprits: list[str]) -> str:
    """What was non-finite on this process, in words."""
    parts = ["a non-finite loss"] if bad_loss else []
    if culprits:
        more = f" (+{len(culprits) - 3} more)" if len(culprits) > 3 else ""
        parts.append(f"non-finite gradients in {', '.join(culprits[:3])}{more}")
    return " and ".join(parts) or "a non-finite loss or gradient on another process"


def _local(tensor: Tensor) -> Tensor:
    """This process's part of a (possibly sharded) tensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _gradients(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [_local(p.grad) for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def _nonfinite_gradient_names(pl_module: L.LightningModule) -> list[str]:
    """Names of the parameters whose gradient holds a NaN or an inf on this process (only read on a bad step)."""
    return [name for name, p in pl_module.named_parameters()
            if p.grad is not None and not bool(torch.isfinite(_local(p.grad)).all())]
