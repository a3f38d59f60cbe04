"""The adapted policy's own base model, adapter disabled, as the reference: no second copy of the weights (a
quantised base too: QLoRA's reference is the same 4-bit model)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import PeftModel
from torch import Tensor, nn

from lit_align.errors import ConfigError
from lit_align.models.adapters import base_change
from lit_align.models.layout import decoder_inputs, response_states
from lit_align.models.policy import final_hidden, lm_head
from lit_align.reference.base import OnlineReference
from lit_align.sae.hooks import residual_stream


class DisabledAdapter(OnlineReference):
    """The reference is the policy with its adapter switched off (peft's ``disable_adapter``), run in eval mode
    without gradients; refused where that is not the base the run started from (:func:`base_change`)."""

    def __init__(self) -> None:
        self.policy: PeftModel | None = None

    def attach(self, policy: nn.Module, datamodule=None) -> None:
        if not isinstance(policy, PeftModel):
            raise ValueError("DisabledAdapter needs an adapted policy: set model.policy.lora or model.policy.peft, "
                             "or use FrozenCopy as the reference")
        if (reason := base_change(policy)) is not None:
            raise ConfigError("model.reference", "DisabledAdapter",
                              f"a policy whose adapter-disabled model is its base, but {reason}: use "
                              "lit_align.reference.FrozenCopy")
        self.policy = policy

    @contextmanager
    def generation_model(self) -> Iterator[nn.Module]:
        with self.policy.disable_adapter():
            yield self.policy

    def final_hidden(self, batch: dict[str, Tensor]) -> tuple[Tensor, nn.Module]:
        with self._base():
            hidden = final_hidden(self.policy, **decoder_inputs(batch, self.policy))
        return response_states(batch, hidden), lm_head(self.policy)

    def residual(self, batch: dict[str, Tensor], layer: int) -> Tensor:
        with self._base():
            residual = residual_stream(self.policy, layer, **decoder_inputs(batch, self.policy))
        return response_states(batch, residual)

    @contextmanager
    def _base(self) -> Iterator[None]:
        """The policy as its base model: adapter disabled, eval mode, no gradients."""
        was_training = self.policy.training
        self.policy.eval()
        try:
            with torch.no_grad(), self.policy.disable_adapter():
                yield
        finally:
            self.policy.train(was_training)
