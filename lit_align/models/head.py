"""The output head of a causal LM: final hidden states to the logits the model's own ``forward`` returns.

Several transformers families transform the logits after the LM head projection (transformers 5.24)::

    gemma2, gemma3_text   z ← cap · tanh(z / cap)     cap = config.final_logit_softcapping (unset: none)
    cohere                z ← z · config.logit_scale
    granite               z ← z / config.logits_scaling

so ``lm_head(hidden)`` alone gives other log-probs than ``log_softmax(model(...).logits)`` (on the tiny Gemma-2 of
``tests/families.py``, softcap 5, one response's −53.28 instead of −32.17). :class:`OutputHead` is the projection
followed by the family's transform, and every log-prob path (policy, references, token KL, store, evaluation) goes
through it.

:func:`check_output_head` refuses, when a model is configured, a model whose ``model(...).logits`` this head does
not reproduce: it runs one short forward and compares (so a family with a transform not listed here, or a
config setting that changes the head, is refused naming its ``model_type``). A model without weights yet (on
the meta device) cannot run that forward; it is accepted only if its family is one of
:data:`VERIFIED_MODEL_TYPES`, those the test suite checks (``tests/test_families.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from peft import PeftModel
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel


def softcap(logits: Tensor, cap: float) -> Tensor:
    """``cap · tanh(z / cap)``, in the order of Gemma-2's forward."""
    return torch.tanh(logits / cap) * cap


POST_HEAD: dict[str, tuple[str, Callable[[Tensor, float], Tensor]]] = {
    "gemma2": ("final_logit_softcapping", softcap),
    "gemma3_text": ("final_logit_softcapping", softcap),
    "cohere": ("logit_scale", torch.mul),
    "granite": ("logits_scaling", torch.div),
}
"""Per ``model_type``: the config attribute holding the transform's constant and the transform ``f(z, c)``."""

VERIFIED_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "olmo2", "gpt2", "gpt_neox", *POST_HEAD}
)
"""Families whose head path the test suite checks against ``model(...).logits``, with and without LoRA."""


class OutputHead(nn.Module):
    """Hidden states to logits: the model's output embeddings, then its family's post-head transform.

    Args:
        projection: the model's ``get_output_embeddings()``.
        transform: ``f(z, constant)`` applied to the projected logits, or ``None``.
        constant: the transform's constant (softcap, scale or divisor).
    """

    def __init__(
        self, projection: nn.Module, transform: Callable[[Tensor, float], Tensor] | None = None,
        constant: float | None = None,
    ) -> None:
        super().__init__()
        self.projection = projection
        self.transform = transform
        self.constant = constant

    def forward(self, hidden: Tensor) -> Tensor:
        logits = self.projection(hidden)
        return logits if self.transform is None else self.transform(logits, self.constant)


def output_head(model: nn.Module) -> OutputHead:
    """The :class:`OutputHead` of a causal LM (through a peft or FSDP wrapper)."""
    config = model.config
    attribute, transform = POST_HEAD.get(config.model_type, (None, None))
    constant = getattr(config, attribute) if attribute is not None else None
    if constant is None:
        transform = None
    return OutputHead(model.get_output_embeddings(), transform, constant)


def final_hidden(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | dict[str, Tensor], position_ids: Tensor | None = None
) -> Tensor:
    """Final hidden states (after the last norm: Llama's ``norm``, GPT-2's ``ln_f``, GPT-NeoX's
    ``final_layer_norm``, ...) of a causal LM, without computing any logits.

    ``attention_mask`` is a 2D padding mask, or a prepared 4D mask (one per layer type for the families that take
    that) with the tokens' ``position_ids`` (see :mod:`lit_align.models.layout`).

    A model sharded with FSDP (:mod:`lit_align.models.sharding`) runs through its own forward, which gathers its root
    unit (embedding, norm and, with FSDP2, LM head), with logits for the last position only."""
    positions = {} if position_ids is None else {"position_ids": position_ids}
    if isinstance(model, FSDPModule | FullyShardedDataParallel):
        return hidden_through_forward(model, input_ids, attention_mask, **positions)
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    decoder = base.get_decoder()
    return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **positions).last_hidden_state


def hidden_through_forward(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor | dict[str, Tensor], position_ids: Tensor | None = None
) -> Tensor:
    """:func:`final_hidden` through the model's own forward: its last ``hidden_states`` entry (after the final
    norm in every verified family), with logits for the last position only."""
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                    output_hidden_states=True, logits_to_keep=1)
    return outputs.hidden_states[-1]


def check_output_head(model: nn.Module) -> None:
    """Refuse a causal LM whose ``model(...).logits`` are not ``output_head(model)(final_hidden(...))``.

    One forward of 8 tokens, in eval mode without gradients; log-probs must agree to 1e-4 (2e-2 in 16-bit
    dtypes). On the meta device only :data:`VERIFIED_MODEL_TYPES` pass.
    """
    model_type = model.config.model_type
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
