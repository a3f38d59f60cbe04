"""The output head of a causal LM: final hidden states to the logits the model's own ``forward`` returns.

Several transformers families transform the logits around the LM head projection (``z ← z · logit_scale`` in
Cohere, ``z / logits_scaling`` in Granite, ``cap · tanh(z / cap)`` in Gemma-2, ``hidden / logits_scaling``
before the head in MiniCPM3, ...): each family's transform is data in its registry entry
(:mod:`lit_align.models.families`), so ``lm_head(hidden)`` alone gives other log-probs than
``log_softmax(model(...).logits)`` (on the tiny Gemma-2 of ``tests/families.py``, softcap 5, one response's
−53.28 instead of −32.17). :class:`OutputHead` is the projection with the family's transform, and every
log-prob path (policy, references, token KL, store, evaluation) goes through it.

:func:`check_output_head` refuses, when a model is configured, a family the registry refuses by name, and a
model whose ``model(...).logits`` this head does not reproduce: it runs one short forward and compares (so a
family with a transform not in the registry, or a config setting that changes the head, is refused naming its
``model_type``). A model without weights yet (on the meta device) cannot run that forward; it is accepted only
if its family is one of :data:`VERIFIED_MODEL_TYPES`, those the test suite checks (``tests/test_families.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

from lit_align.models.families import FAMILIES, REFUSED, VERIFIED_MODEL_TYPES
from lit_align.models.pair_attention import Spans

__all__ = ["POST_HEAD", "VERIFIED_MODEL_TYPES", "OutputHead", "check_output_head", "final_hidden",
           "hidden_through_forward", "output_head", "softcap"]


def softcap(logits: Tensor, cap: float) -> Tensor:
    """``cap · tanh(z / cap)``, in the order of Gemma-2's forward."""
    return torch.tanh(logits / cap) * cap


OPERATIONS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "multiply": torch.mul, "divide": torch.div, "softcap": softcap,
}
"""Each :data:`~lit_align.models.families.Operation` as ``f(z, c)``."""

POST_HEAD: dict[str, tuple[str, Callable[[Tensor, float], Tensor]]] = {
    name: (family.post_head.attribute, OPERATIONS[family.post_head.operation])
    for name, family in FAMILIES.items()
    if family.post_head is not None and not family.post_head.before_head and family.refused is None
}
"""Per ``model_type`` with a transform after the projection: its config attribute and ``f(z, c)`` (derived from
the registry, :data:`lit_align.models.families.FAMILIES`)."""


class OutputHead(nn.Module):
    """Hidden states to logits: the model's output embeddings with its family's transform (after the projection,
    or on the hidden states before it).

    Args:
        projection: the model's ``get_output_embeddings()``.
        transform: ``f(z, constant)``, or ``None``.
        constant: the transform's constant (softcap, scale or divisor).
        before_head: apply the transform to the hidden states before the projection.
    """

    def __init__(
        self, projection: nn.Module, transform: Callable[[Tensor, float], Tensor] | None = None,
        constant: float | None = None, before_head: bool = False,
    ) -> None:
        super().__init__()
        self.projection = projection
        self.transform = transform
        self.constant = constant
        self.before_head = before_head

    def forward(self, hidden: Tensor) -> Tensor:
        if self.transform is None:
            return self.projection(hidden)
        if self.before_head:
            return self.projection(self.transform(hidden, self.constant))
        return self.transform(self.projection(hidden), self.constant)


def output_head(model: nn.Module) -> OutputHead:
    """The :class:`OutputHead` of a causal LM (through a peft or FSDP wrapper), as its registry entry says."""
    config = model.config
    family = FAMILIES.get(config.model_type)
    post_head = None if family is None else family.post_head
    constant = None if post_head is None else getattr(config, post_head.attribute, None)
    if constant is None:
        return OutputHead(model.get_output_embeddings())
    return OutputHead(model.get_output_embeddings(), OPERATIONS[post_head.operation], constant,
                      post_head.before_head)


def final_hidden(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | dict[str, Tensor], position_ids: Tensor | None = None,
    pair_spans: Spans | None = None,
) -> Tensor:
    """Final hidden states (after the last norm: Llama's ``norm``, GPT-2's ``ln_f``, GPT-NeoX's
    ``final_layer_norm``, ...) of a causal LM, without computing any logits.

    ``attention_mask`` is a 2D padding mask, or a prepared 4D mask (one per layer type for the families that take
    that) with the tokens' ``position_ids`` (see :mod:`lit_align.models.layout`), and ``pair_spans`` where the model
    attends by pair (:mod:`lit_align.models.pair_attention`).

    A model sharded with FSDP (:mod:`lit_align.models.sharding`) runs through its own forward, which gathers its root
    unit (embedding, norm and, with FSDP2, LM head), with logits for the last position only."""
    extra = packed_arguments(position_ids, pair_spans)
    if isinstance(model, FSDPModule | FullyShardedDataParallel):
        return hidden_through_forward(model, input_ids, attention_mask, **extra)
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    decoder = base.get_decoder()
    return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).last_hidden_state


def packed_arguments(position_ids: Tensor | None, pair_spans: Spans | None) -> dict[str, Any]:
    """The packed layout's decoder arguments that were given."""
    extra = {"position_ids": position_ids, "pair_spans": pair_spans}
    return {name: value for name, value in extra.items() if value is not None}


def hidden_through_forward(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | dict[str, Tensor], position_ids: Tensor | None = None,
    pair_spans: Spans | None = None,
) -> Tensor:
    """:func:`final_hidden` through the model's own forward, with logits for the last position only: the
    ``last_hidden_state`` its decoder returns, caught on the way (a forward's last ``hidden_states`` entry is not
    that in every family: Gemma-3n's is its AltUp streams before they are merged and normed)."""
    caught: list[Tensor] = []
    hook = model.get_decoder().register_forward_hook(lambda module, args, output: caught.append(
        output.last_hidden_state))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1,
              **packed_arguments(position_ids, pair_spans))
    finally:
        hook.remove()
    return caught[-1]


def check_output_head(model: nn.Module) -> None:
    """Refuse a causal LM whose ``model(...).logits`` are not ``output_head(model)(final_hidden(...))``.

    One forward of 8 tokens, in eval mode without gradients; log-probs must agree to 1e-4 (2e-2 in 16-bit
    dtypes). On the meta device only :data:`VERIFIED_MODEL_TYPES` pass; a family the registry refuses never does.
    """
    model_type = model.config.model_type
    if model_type in REFUSED:
        raise ValueError(f"model_type {model_type!r} is refused: {REFUSED[model_type]}; lit-align could not compute "
                         f"its log-probs as its forward does. Verified families: {sorted(VERIFIED_MODEL_TYPES)}")
    parameter = next(model.parameters())
    if parameter.is_meta:
        if model_type not in VERIFIED_MODEL_TYPES:
            raise ValueError(
                f"cannot check the output head of model_type {model_type!r} on the meta device; lit-align computes "
                f"log-probs from the final hidden states and verifies that family's head on real weights. Verified "
                f"families: {sorted(VERIFIED_MODEL_TYPES)}"
            )
        return
    input_ids = (torch.arange(8, device=parameter.device) * 7919 + 3) % model.get_input_embeddings().num_embeddings
    input_ids, attention_mask = input_ids[None], torch.ones(1, 8, dtype=torch.long, device=parameter.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            got = output_head(model)(final_hidden(model, input_ids, attention_mask))
    finally:
        model.train(was_training)
    tolerance = 2e-2 if parameter.dtype in (torch.float16, torch.bfloat16) else 1e-4
    expected, got = expected.float().log_softmax(-1), got.float().log_softmax(-1)
    if not torch.allclose(got, expected, rtol=tolerance, atol=tolerance):
        raise ValueError(
            f"model_type {model_type!r}: its forward changes the logits in a way lit-align does not reproduce "
            f"(log-probs differ by up to {(got - expected).abs().max().item():.3g} between model(...).logits and "
            "the final hidden states through the output head), so lit-align cannot compute its log-probs; "
            f"verified families: {sorted(VERIFIED_MODEL_TYPES)}"
        )
