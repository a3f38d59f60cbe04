"""The reference-provider contract: one interface for a frozen copy, the adapter-disabled base and a store."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from lit_align.models.logprobs import sequence_logps
from lit_align.models.token_logps import response_logps
from lit_align.objectives.base import POLICY_SIDE, Need

if TYPE_CHECKING:
    from lit_align.models.policy import PolicySpec
    from lit_align.sae.features import SAEFeatures


class ReferenceProvider(ABC):
    """Supplies the reference side of an objective's inputs.

    ``provides`` lists the :data:`~lit_align.objectives.base.Need` values it can serve; the module checks an
    objective's ``needs`` against it at setup, all but the policy-side ones
    (:data:`~lit_align.objectives.base.POLICY_SIDE`). The reference is never a registered submodule of the
    LightningModule, so it stays out of the optimizer and out of checkpoints.
    """

    provides: ClassVar[frozenset[Need]]

    def check(self, needs: frozenset[Need], objective_name: str) -> None:
        """Refuse an objective whose needs this provider cannot serve, saying how to fix it."""
        missing = needs - POLICY_SIDE - self.provides
        if missing:
            raise ValueError(
                f"{objective_name} needs {sorted(missing)}, which {type(self).__name__} cannot provide "
                f"(it provides {sorted(self.provides)}). {self._remedy(missing)}"
            )

    def _remedy(self, missing: frozenset[Need]) -> str:
        return "Use an online reference (FrozenCopy, or DisabledAdapter with a LoRA policy)."

    @abstractmethod
    def attach(self, policy: nn.Module, datamodule=None) -> None:
        """Prepare the reference for ``policy`` (called in ``configure_model``, before any training).

        ``datamodule`` is the run's data, when there is one; a store checks that it covers it."""

    def bind_policy_spec(self, spec: PolicySpec) -> None:
        """Learn how the policy is loaded (called when the module is built), for a provider that loads a model of
        its own the same way; the others need nothing."""
        return None

    def shard(self, shard_model: Callable[[nn.Module], nn.Module]) -> None:
        """Shard the reference's own model with ``shard_model`` (which returns the sharded model), as the policy is
        sharded; called after :meth:`attach` under FSDP. A provider without a model of its own has nothing to
        shard."""
        return None

    def own_model(self) -> nn.Module | None:
        """The reference's model when it is not the policy's (a frozen copy), so the module can check that it
        takes the batch layout the policy takes; ``None`` otherwise."""
        return None

    @abstractmethod
    def sequence_logps(self, batch: dict[str, Tensor]) -> Tensor:
        """Summed reference log-probs of each response, ``(2B,)`` in the batch's row order."""

    def token_logps(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Summed reference log-probs of each response, ``(2B,)``, and the per-token ones, left-aligned,
        ``(2B, width)`` (:func:`lit_align.models.token_logps.response_logps`), no grad."""
        raise NotImplementedError(f"{type(self).__name__} provides no per-token log-probs")

    def attach_features(self, features: SAEFeatures) -> None:
        """Prepare to serve the SAE ``features`` (the objective's extractor: an SAE at one layer); called after
        :meth:`attach` when the objective needs ``sae_features``. Online references need nothing."""
        return None

    def sae_features(self, batch: dict[str, Tensor], features: SAEFeatures) -> Tensor:
        """The reference's SAE features of each response, pooled over its tokens, ``(2B, d_sae)``, no grad."""
        raise NotImplementedError(f"{type(self).__name__} provides no SAE features")


class OnlineReference(ReferenceProvider):
    """A reference model that runs on every batch; it also serves full next-token distributions."""

    provides: ClassVar[frozenset[Need]] = frozenset({"reference_logps", "token_kl", "sae_features", "token_logps"})

    @abstractmethod
    def generation_model(self) -> AbstractContextManager[nn.Module]:
        """A context yielding the reference as a causal LM that can ``generate`` (for sampling and evaluation)."""

    @abstractmethod
    def final_hidden(self, batch: dict[str, Tensor]) -> tuple[Tensor, nn.Module]:
        """The reference's final hidden states (no grad) at the rows of ``batch["input_ids"]``, ``(2B, T, H)``
        (:func:`lit_align.models.layout.response_states`), and its LM head."""

    @abstractmethod
    def residual(self, batch: dict[str, Tensor], layer: int) -> Tensor:
        """The reference's residual stream at the output of decoder layer ``layer``, at the rows of
        ``batch["input_ids"]``, ``(2B, T, H)``, no grad; only layers ``0..layer`` run."""

    def sequence_logps(self, batch: dict[str, Tensor]) -> Tensor:
        hidden, head = self.final_hidden(batch)
        with torch.no_grad():
            return sequence_logps(hidden, head, batch["input_ids"], batch["response_mask"])

    def token_logps(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        hidden, head = self.final_hidden(batch)
        with torch.no_grad():
            result = response_logps(hidden, head, batch["input_ids"], batch["response_mask"])
        return result.sums, result.per_token

    def sae_features(self, batch: dict[str, Tensor], features: SAEFeatures) -> Tensor:
        states = features.reference_states(self, batch)
        with torch.no_grad():
            return features.encode(states, batch["response_mask"])
