"""A frozen copy of the initial policy (or of another model) as the reference."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor, nn

from lit_align.models.head import check_output_head
from lit_align.models.layout import decoder_inputs, response_states
from lit_align.models.loading import is_empty, load_base
from lit_align.models.policy import DType, PolicySpec, final_hidden, lm_head
from lit_align.paths import absolute_if_local
from lit_align.reference.base import OnlineReference
from lit_align.sae.hooks import residual_stream


class FrozenCopy(OnlineReference):
    """A frozen, eval-mode copy of the policy as it is before training, or the model at ``path``.

    The copy is built in ``configure_model`` as the policy's base is — from the same files, or the same seeded
    config — and never copied from the policy: so after a resume or in ``load_from_checkpoint`` it holds the
    initial weights, never trained ones, and a large model is read once, shard by shard, like the policy
    (:mod:`lit_align.models.loading`).

    Args:
        path: a separate reference model; unset means a copy of the initial policy (without its LoRA adapter).
        dtype: the reference's dtype; unset: the policy's.
        trust_remote_code: run the hub code of the model at ``path``; unset: as the policy.
        extra: further ``from_pretrained`` keyword arguments for ``path``; unset: the policy's ``extra``.
    """

    def __init__(
        self,
        path: str | None = None,
        dtype: DType | None = None,
        trust_remote_code: bool | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.path = None if path is None else absolute_if_local(path)
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.extra = extra
        self.policy_spec: PolicySpec | None = None
        self.model: nn.Module | None = None

    def bind_policy_spec(self, spec: PolicySpec) -> None:
        self.policy_spec = spec

    def spec(self) -> PolicySpec:
        """How the reference model is loaded: as the policy's base (its path or config, dtype,
        ``trust_remote_code`` and ``extra``), from ``path`` if set, with this reference's own settings where they
        are set; no adapter, no gradient checkpointing."""
        base = self.policy_spec or PolicySpec(path=self.path)
        source = {"path": self.path, "config": None} if self.path is not None else {}
        overrides = {"dtype": self.dtype, "trust_remote_code": self.trust_remote_code, "extra": self.extra}
        return dataclasses.replace(
            base, lora=None, peft=None, gradient_checkpointing=False, **source,
            **{name: value for name, value in overrides.items() if value is not None},
        )

    def attach(self, policy: nn.Module, datamodule=None) -> None:
        """Build the reference as the policy's base is built (:func:`lit_align.models.loading.load_base`): its weights
        read once from its files, or left on the meta device like an empty policy's, for sharding to fill. Used
        on its own (no policy spec bound, no ``path``), it copies the model in hand."""
        if self.path is None and self.policy_spec is None:
            model = copy.deepcopy(policy.get_base_model() if isinstance(policy, PeftModel) else policy)
        elif self.path is None:  # the policy's own base, whose output head build_policy has checked
            model = load_base(self.spec(), empty=is_empty(policy))
        else:
            model = load_base(self.spec(), key="model.reference.path", empty=is_empty(policy))
            check_output_head(model)
        self.model = model.requires_grad_(False).eval()

    def shard(self, shard_model: Callable[[nn.Module], nn.Module]) -> None:
        self.model = shard_model(self.model).eval()

    def own_model(self) -> nn.Module | None:
        return self.model

    @contextmanager
    def generation_model(self) -> Iterator[nn.Module]:
        yield self.model

    def final_hidden(self, batch: dict[str, Tensor]) -> tuple[Tensor, nn.Module]:
        model = self._on_device(batch)
        with torch.no_grad():
            hidden = final_hidden(model, **decoder_inputs(batch, model))
        return response_states(batch, hidden), lm_head(model)

    def residual(self, batch: dict[str, Tensor], layer: int) -> Tensor:
        model = self._on_device(batch)
        with torch.no_grad():
            return response_states(batch, residual_stream(model, layer, **decoder_inputs(batch, model)))

    def _on_device(self, batch: dict[str, Tensor]) -> nn.Module:
        """The model, moved to the batch's device the first time it is needed there."""
        device = batch["input_ids"].device
        if self.model.device != device:
            self.model.to(device)
        return self.model
