"""What differs between transformers model families, as data: one :class:`Family` entry per ``model_type``.

An entry declares what lit-align must know of a family to reproduce its ``model(...).logits`` and to run it in
the packed layout:

- ``post_head``: what its ``ForCausalLM.forward`` does around the LM head projection (a :class:`Transform`:
  multiply or divide by a config constant, softcap, or scale the hidden states before the head), applied by
  :class:`lit_align.models.head.OutputHead`;
- ``attention``: the attention kinds its layers may take (``config.layer_types`` says which layer takes which);
- ``positions``: its position scheme;
- ``tied``: whether its config ties the output embeddings to the input ones by default;
- ``packed``: how the packed layout's mask reaches its decoder, where that is verified (``None``: it runs padded);
- ``unpackable``: why it cannot run packed, when it cannot (said in the warning of a run that falls back to padded);
- ``refused``: why lit-align refuses it, when it does (checked before any forward).

A family in :data:`FAMILIES` and not refused is *verified*: ``tests/test_families.py`` checks its log-probs on
every path against float64 ``log_softmax(model(...).logits)``, and ``tests/families.py`` holds its tiny config. A
family outside :data:`FAMILIES` is accepted only when its logits prove to be the bare projection of its final
hidden states on the actual model (:func:`lit_align.models.head.check_output_head`).

Adding a family is one entry here and one row in ``tests/families.py``. Transforms as of transformers 5.25
(read from each ``modeling_<family>.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Operation = Literal["multiply", "divide", "softcap"]
Attention = Literal["full", "sliding", "chunked", "recurrent"]
"""``recurrent``: a state-space or linear-recurrence layer (Mamba, RG-LRU, xLSTM) instead of, or beside, attention."""
Positions = Literal["rotary", "partial_rotary", "absolute", "none"]
PackedMask = Literal["one_mask", "mask_per_layer_type"]
"""``one_mask``: the decoder takes one 4D mask for every layer (in a family whose ``attention`` includes
``sliding``, lit-align applies ``config.sliding_window`` to it); ``mask_per_layer_type``: it takes
``{layer type: mask}`` (the window applied to the ``sliding_attention`` one)."""


@dataclass(frozen=True)
class Transform:
    """``z ← f(z, c)`` with ``c = config.<attribute>`` (no transform when that is ``None``).

    Args:
        operation: ``multiply`` (``z · c``), ``divide`` (``z / c``) or ``softcap`` (``c · tanh(z / c)``).
        attribute: the config attribute holding ``c``.
        before_head: applied to the final hidden states before the projection instead of to the logits after it
            (MiniCPM3 divides its hidden states).
    """

    operation: Operation
    attribute: str
    before_head: bool = False


@dataclass(frozen=True)
class Family:
    """One transformers family (a ``model_type``) as lit-align runs it; see the module docstring."""

    model_type: str
    post_head: Transform | None = None
    attention: tuple[Attention, ...] = ("full",)
    positions: Positions = "rotary"
    tied: bool = False
    packed: PackedMask | None = None
    unpackable: str | None = None
    refused: str | None = None


SOFTCAP = Transform("softcap", "final_logit_softcapping")
COHERE = Transform("multiply", "logit_scale")
GRANITE = Transform("divide", "logits_scaling")
WINDOWED: tuple[Attention, ...] = ("full", "sliding")
HYBRID: tuple[Attention, ...] = ("full", "recurrent")
ONE: PackedMask = "one_mask"
PER_TYPE: PackedMask = "mask_per_layer_type"
RECURRENT = ("its {} layers carry a state along the row, which no attention mask cuts between a packed row's pairs "
             "(or between a pair's chosen and rejected response)")


def _registry(*families: Family) -> dict[str, Family]:
    for family in families:
        if family.packed is not None and family.unpackable is not None:
            raise ValueError(f"{family.model_type}: packed and unpackable exclude each other")
    return {family.model_type: family for family in families}


FAMILIES: dict[str, Family] = _registry(
    # no transform after the head
    Family("llama", packed=ONE),
    Family("mistral", attention=WINDOWED, packed=ONE),
    Family("mixtral", attention=WINDOWED, packed=ONE),
    Family("qwen2", attention=WINDOWED, packed=PER_TYPE),
    Family("qwen3", attention=WINDOWED, packed=PER_TYPE),
    Family("gemma", tied=True, packed=ONE),
    Family("phi3", attention=WINDOWED, packed=ONE),
    Family("olmo2", packed=ONE),
    Family("gpt2", positions="absolute", tied=True, packed=ONE),
    Family("gpt_neox", positions="partial_rotary", packed=ONE),
    # softcap: cap · tanh(z / cap)
    Family("gemma2", SOFTCAP, WINDOWED, tied=True, packed=PER_TYPE),
    Family("gemma3_text", SOFTCAP, WINDOWED, tied=True, packed=PER_TYPE),
    Family("gemma3n_text", SOFTCAP, WINDOWED, tied=True, packed=PER_TYPE),
    Family("vaultgemma", SOFTCAP, WINDOWED, tied=True, packed=PER_TYPE),
    Family("nanochat", SOFTCAP, packed=ONE),
    Family("beam", SOFTCAP, WINDOWED, packed=PER_TYPE),
    Family("recurrent_gemma", Transform("softcap", "logits_soft_cap"), ("sliding", "recurrent"),
           positions="partial_rotary", tied=True, unpackable=RECURRENT.format("RG-LRU")),
    # z · logit_scale (Cohere), z · lm_head_multiplier (Falcon-H1), z · logits_scaling (HyperCLOVA X)
    Family("cohere", COHERE, tied=True, packed=ONE),
    Family("cohere2", COHERE, WINDOWED, tied=True, packed=PER_TYPE),
    Family("cohere2_moe", COHERE, WINDOWED, tied=True, packed=PER_TYPE),
    Family("cohere_compass_text", COHERE, tied=True, packed=PER_TYPE),
    Family("falcon_h1", Transform("multiply", "lm_head_multiplier"), HYBRID, unpackable=RECURRENT.format("Mamba")),
    Family("hyperclovax", Transform("multiply", "logits_scaling"), packed=ONE),
    # z / logits_scaling (Granite), hidden / logits_scaling before the head (MiniCPM3)
    Family("granite", GRANITE, packed=ONE),
    Family("granitemoe", GRANITE, packed=ONE),
    Family("granitemoeshared", GRANITE, packed=ONE),
    Family("granitemoehybrid", GRANITE, HYBRID, positions="none", unpackable=RECURRENT.format("Mamba")),
    Family("granite_swa", GRANITE, WINDOWED, tied=True, packed=PER_TYPE),
    Family("granitemoe_swa", GRANITE, WINDOWED, packed=PER_TYPE),
    Family("minicpm3", Transform("divide", "logits_scaling", before_head=True), positions="partial_rotary", tied=True,
           packed=ONE),
    # refused by name: a causal LM of transformers 5.25 whose logits the head above does not give
    Family("inkling_text", refused="its forward cuts the logits to config.unpadded_vocab_size after the head"),
    Family("prophetnet", refused="an encoder-decoder predicting n-grams; its logits are the first stream of several"),
    Family("electra", refused="its logits come from a generator head (generator_predictions, then generator_lm_head)"),
    Family("modernbert-decoder", refused="a decoder module runs after lm_head (logits = decoder(lm_head(hidden)))"),
    Family("gemma4_assistant", refused="an assistant (drafting) model: its head reads a post-projection of the "
                                       "target's hidden states"),
    Family("gemma4_unified_assistant", refused="an assistant (drafting) model: its head reads a post-projection of "
                                               "the target's hidden states"),
    Family("gemma3n", refused="a multimodal model; build its text model (model_type 'gemma3n_text')"),
    Family("gemma4", refused="a multimodal model whose text model is not verified here"),
    Family("gemma4_unified", refused="a multimodal model whose text model is not verified here"),
    Family("gemma4_text", refused="softcaps like Gemma-2, but its decoder takes per-layer inputs and shared KV "
                                  "layers not verified here"),
    Family("gemma4_unified_text", refused="softcaps like Gemma-2, but its decoder takes per-layer inputs and "
                                          "shared KV layers not verified here"),
    Family("inkling2_text", refused="softcaps through its own module (logit_softcap), not verified here"),
    Family("xlstm", refused="softcaps its logits (output_logit_soft_cap), but a tiny xLSTM fails on the CPU kernels "
                            "of transformers 5.25 (a shape error), so that path is not verified"),
    Family("inkling2_loop_text", refused="softcaps through its own module (logit_softcap), not verified here"),
)
"""Every family lit-align knows, keyed by ``model_type``."""

VERIFIED_MODEL_TYPES = frozenset(name for name, family in FAMILIES.items() if family.refused is None)
"""Families whose head path the test suite checks against ``model(...).logits``, with and without LoRA."""
REFUSED: dict[str, str] = {name: family.refused for name, family in FAMILIES.items() if family.refused is not None}
"""Families refused by name, with the reason."""


def family_of(model_type: str) -> Family | None:
    """The registry entry of ``model_type``, or ``None`` for a family lit-align has no entry for."""
    return FAMILIES.get(model_type)


def packed_families(mask: PackedMask | None = None) -> frozenset[str]:
    """The families verified in the packed layout (those taking ``mask``, when given)."""
    return frozenset(name for name, family in FAMILIES.items()
                     if family.packed is not None and (mask is None or family.packed == mask))
