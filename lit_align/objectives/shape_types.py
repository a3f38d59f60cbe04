"""The loss-shape registry: the names, the inputs every shape reads (:class:`Pair`, :class:`ShapeParams`) and
:data:`LOSS_SHAPES`, which :mod:`lit_align.objectives.shapes` fills with one pure function per shape."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from jsonargparse.typing import restricted_number_type
from torch import Tensor

ShapeName = Literal[
    "sigmoid",
    "conservative",
    "robust",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
]

LabelSmoothing = restricted_number_type(
    "LabelSmoothing", float, [(">=", 0.0), ("<", 0.5)], docstring="label smoothing ε in [0, 0.5)"
)
"""ε in [0, 0.5): the probability that a preference label is flipped (cDPO, rDPO, AOT) or EXO's target ε."""


@dataclass(frozen=True)
class Pair:
    """What a loss shape may read, one value per pair: every tensor has shape ``(batch,)``."""

    chosen: Tensor
    """``s_w = f'(π_θ(y_w|x) / π_ref(y_w|x)) - f'(1)``; the log-ratio ``r_w`` under the reverse KL."""
    rejected: Tensor
    """``s_l``, the same for the rejected response."""
    chosen_lengths: Tensor
    """Response tokens of the chosen response (≥ 1)."""
    rejected_lengths: Tensor
    policy_margin: Tensor
    """``log π_θ(y_w|x) - log π_θ(y_l|x)`` (read by AOT only)."""
    reference_margin: Tensor
    """``log π_ref(y_w|x) - log π_ref(y_l|x)`` (read by AOT only)."""

    @property
    def margin(self) -> Tensor:
        """``Δ = s_w - s_l``."""
        return self.chosen - self.rejected

    @property
    def length_normalised_margin(self) -> Tensor:
        """``s_w / ℓ_w - s_l / ℓ_l`` (lengths clamped at 1, as TRL)."""
        chosen = self.chosen / self.chosen_lengths.clamp(min=1)
        return chosen - self.rejected / self.rejected_lengths.clamp(min=1)


@dataclass(frozen=True)
class ShapeParams:
    """Hyperparameters a loss shape may read."""

    beta: float
    label_smoothing: float = 0.0
    discopop_tau: float = 0.05


@dataclass(frozen=True)
class LossShape:
    """A registered shape: the per-pair loss and what it accepts."""

    loss: Callable[[Pair, ShapeParams], Tensor]
    f_divergence: bool
    """Whether the shape accepts a divergence other than the reverse KL."""
    label_smoothing: Literal["unused", "optional", "required"]
    """Whether the shape reads ε: ``unused`` ones refuse ε > 0, ``required`` ones refuse ε = 0."""


LOSS_SHAPES: dict[str, LossShape] = {}
"""Every loss shape by its YAML name (the values of :data:`ShapeName`)."""


def register(
    name: str, *, f_divergence: bool, label_smoothing: Literal["unused", "optional", "required"] = "unused"
) -> Callable[[Callable[[Pair, ShapeParams], Tensor]], Callable[[Pair, ShapeParams], Tensor]]:
    """Add the decorated per-pair loss to :data:`LOSS_SHAPES` under ``name``."""
    def add(loss: Callable[[Pair, ShapeParams], Tensor]) -> Callable[[Pair, ShapeParams], Tensor]:
        LOSS_SHAPES[name] = LossShape(loss, f_divergence, label_smoothing)
        return loss

    return add
