"""A frozen copy of the initial policy (or of another model) as the reference."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from peft import PeftModel
from torch import Tensor, nn

from lit_align.policy import DType, PolicySpec, final_hidden, lm_head, load_causal_lm
from lit_align.reference.base import OnlineReference
from lit_align.sae.hooks import residual_stream


class FrozenCopy(OnlineReference):
    """A frozen, eval-mode copy of the policy as it is before training, or the model at ``path``.

    The copy is taken in ``configure_model`` from the freshly built policy, so after a resume or in
    ``load_from_checkpoint`` it is rebuilt from the initial weights, never from trained ones.

    Args:
        path: a separate reference model (``from_pretrained``); unset means a copy of the initial policy.
        dtype: the reference's dtype when loaded from ``path``.
    """

    def __init__(self, path: str | None = None, dtype: DType = "float32") -> None:
        self.path = path
        self.dtype = dtype
        self.model: nn.Module | None = None

    def attach(self, policy: nn.Module, datamodule=None) -> None:
        if self.path is not None:
            model = load_causal_lm(PolicySpec(path=self.path, dtype=self.dtype))
        else:
            model = copy.deepcopy(policy.get_base_model() if isinstance(policy, PeftModel) else policy)
        self.model = model.requires_grad_(False).eval()

    def shard(self, shard_model: Callable[[nn.Module], nn.Module]) -> None:
        self.model = shard_model(self.model).eval()

    @contextmanager
    def generation_model(self) -> Iterator[nn.Module]:
        yield self.model

    def final_hidden(self, batch: dict[str, Tensor]) -> tuple[Tensor, nn.Module]:
        model = self._on_device(batch)
        with torch.no_grad():
            return final_hidden(model, batch["input_ids"], batch["attention_mask"]), lm_head(model)

    def residual(self, batch: dict[str, Tensor], layer: int) -> Tensor:
        model = self._on_device(batch)
        with torch.no_grad():
            return residual_stream(model, layer, batch["input_ids"], batch["attention_mask"])

    def _on_device(self, batch: dict[str, Tensor]) -> nn.Module:
        """The model, moved to the batch's device the first time it is needed there."""
        device = batch["input_ids"].device
        if self.model.device != device:
            self.model.to(device)
        return self.model
