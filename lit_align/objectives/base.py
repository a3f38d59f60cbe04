"""The Objective contract: what an objective needs from a batch of preference pairs, and what it returns.

An objective is a pure function of per-pair tensors. It knows nothing of Lightning, of models or of
data loading: the module computes exactly the quantities an objective declares in ``needs`` and hands
them over as :class:`PreferenceInputs`; the objective returns an :class:`ObjectiveOutput`.
Other projects can import any objective and call it on plain tensors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from torch import Tensor

from lit_align.errors import ConfigError

if TYPE_CHECKING:
    from lit_align.sae.features import SAEFeatures

Need = Literal["reference_logps", "token_kl", "sae_features", "token_logps", "log_collision"]
"""Quantities beyond the policy's own log-probs that an objective may ask for:

- ``reference_logps``: summed reference log-probs of each response (any reference provider, or a store).
- ``token_kl``: the sequential token-level KL ``Σ_t KL(π_ref(·|x, y<t) ‖ π_θ(·|x, y<t))``; it needs the
  reference's full next-token distributions, so only an online reference can provide it.
- ``sae_features``: response-pooled sparse-autoencoder features of policy and reference at one layer.
- ``token_logps``: per-token response log-probs of policy and reference, left-aligned (LD-DPO); only an online
  reference has them.
- ``log_collision``: the policy's ``Σ_t log Σ_v π_θ(v|x, y<t)²`` over each response, no grad (WPO); policy-side.
"""

POLICY_SIDE: frozenset[Need] = frozenset({"log_collision"})
"""Needs the module computes from the policy alone: no reference provider is asked for them."""


@dataclass
class PreferenceInputs:
    """Per-pair quantities for one batch. Every tensor has shape ``(batch,)`` unless noted.

    The policy fields are always present; the others are filled only when the objective asks for them.
    Log-probs are summed over response tokens: ``log π(y|x) = Σ_t log π(y_t|x, y_<t)``.
    """

    policy_chosen_logps: Tensor
    policy_rejected_logps: Tensor
    chosen_lengths: Tensor
    """Number of response tokens of the chosen response (float, ≥ 1)."""
    rejected_lengths: Tensor
    ref_chosen_logps: Tensor | None = None
    ref_rejected_logps: Tensor | None = None
    chosen_seq_kl: Tensor | None = None
    """``SeqKL(x, y_w) = Σ_t KL(π_ref ‖ π_θ)`` over the chosen response (``token_kl``)."""
    rejected_seq_kl: Tensor | None = None
    policy_chosen_features: Tensor | None = None
    """Response-pooled SAE features, shape ``(batch, d_sae)`` (``sae_features``)."""
    policy_rejected_features: Tensor | None = None
    ref_chosen_features: Tensor | None = None
    ref_rejected_features: Tensor | None = None
    policy_chosen_token_logps: Tensor | None = None
    """``log π_θ(y_t|x, y<t)`` of each chosen response token, left-aligned (token ``t`` in column ``t``), zero past
    the response's end, shape ``(batch, time)`` (``token_logps``); rows sum to ``policy_chosen_logps``."""
    policy_rejected_token_logps: Tensor | None = None
    ref_chosen_token_logps: Tensor | None = None
    ref_rejected_token_logps: Tensor | None = None
    chosen_log_collision: Tensor | None = None
    """``Σ_t log Σ_v π_θ(v|x, y<t)²`` over the chosen response, no grad (``log_collision``)."""
    rejected_log_collision: Tensor | None = None


@dataclass
class ObjectiveOutput:
    """What an objective returns: per-pair losses, detached implicit rewards and extra metrics.

    ``metrics`` maps a metric name (``"kl/chosen"``) to a per-pair tensor of shape ``(batch,)``; the module
    averages each across micro-batches and processes.
    """

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)

    @property
    def loss(self) -> Tensor:
        """The batch loss: the mean of the per-pair losses."""
        return self.losses.mean()


class Objective(ABC):
    """Base class of every alignment objective.

    Subclasses set ``needs`` to the quantities they read from :class:`PreferenceInputs` beyond the
    policy's log-probs and lengths, and implement :meth:`forward`; one that needs ``sae_features`` also
    returns its extractor from :meth:`feature_extractor`.
    """

    needs: ClassVar[frozenset[Need]] = frozenset({"reference_logps"})

    @abstractmethod
    def forward(self, inputs: PreferenceInputs) -> ObjectiveOutput:
        """Compute the loss for one batch of pairs."""

    def feature_extractor(self) -> SAEFeatures | None:
        """What computes the ``sae_features`` this objective reads (an objective that needs them must return
        one, e.g. a :class:`~lit_align.sae.SAEFeatures` given to it as an argument); ``None`` otherwise. The
        module binds it to the policy and hands the features over in :class:`PreferenceInputs`."""
        if "sae_features" in self.needs:
            raise TypeError(f"{type(self).__name__} needs 'sae_features' but its feature_extractor() names none")
        return None

    def __call__(self, inputs: PreferenceInputs) -> ObjectiveOutput:
        missing = [name for name in self._required_fields() if getattr(inputs, name) is None]
        if missing:
            raise ValueError(f"{type(self).__name__} needs {sorted(self.needs)}; missing inputs: {missing}")
        return self.forward(inputs)

    def _required_fields(self) -> list[str]:
        return [name for need in self.needs for name in _FIELDS_OF_NEED[need]]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


_FIELDS_OF_NEED: dict[str, tuple[str, ...]] = {
    "reference_logps": ("ref_chosen_logps", "ref_rejected_logps"),
    "token_kl": ("chosen_seq_kl", "rejected_seq_kl"),
    "sae_features": (
        "policy_chosen_features",
        "policy_rejected_features",
        "ref_chosen_features",
        "ref_rejected_features",
    ),
    "token_logps": (
        "policy_chosen_token_logps",
        "policy_rejected_token_logps",
        "ref_chosen_token_logps",
        "ref_rejected_token_logps",
    ),
    "log_collision": ("chosen_log_collision", "rejected_log_collision"),
}


def check_beta(beta: float) -> float:
    """Refuse a non-positive β at construction time, naming the parameter."""
    if not beta > 0:
        raise ConfigError("beta", beta, "beta must be > 0")
    return beta
