"""Tiny configs (fp32, vocab 128, hidden 32, 2 layers) of the transformers families lit-align is verified on.

Each family's post-head transform is switched on with a value far from neutral (Gemma-2 / Gemma-3 softcap 5,
Cohere ``logit_scale`` 0.25, Granite ``logits_scaling`` 4) and :func:`build_family` scales the output
embeddings up, so logits are large: a path that skipped the transform would be off by far more than the tests'
tolerance. Reused by every test that must hold across families.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

VOCAB = 128
COMMON: dict[str, Any] = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
GPT2: dict[str, Any] = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                            eos_token_id=2)

FAMILIES: dict[str, dict[str, Any]] = {
    "llama": COMMON,
    "mistral": COMMON,
    "qwen2": COMMON,
    "qwen3": {**COMMON, "head_dim": 8},
    "gemma": {**COMMON, "head_dim": 8},
    "gemma2": {**COMMON, "head_dim": 8, "final_logit_softcapping": 5.0, "attn_logit_softcapping": 50.0},
    "gemma3_text": {**COMMON, "head_dim": 8, "final_logit_softcapping": 5.0, "sliding_window": 4},
    "phi3": COMMON,
    "cohere": {**COMMON, "logit_scale": 0.25},
    "granite": {**COMMON, "logits_scaling": 4.0},
    "olmo2": COMMON,
    "gpt2": GPT2,
    "gpt_neox": {**COMMON, "rotary_pct": 0.5},
}
"""Keyword arguments of ``AutoConfig.for_model`` per ``model_type``."""

POST_HEAD_FAMILIES = ("gemma2", "gemma3_text", "cohere", "granite")
"""Families whose forward transforms the logits after the LM head."""


def build_family(model_type: str, seed: int = 0, head_scale: float = 20.0, **overrides: Any) -> PreTrainedModel:
    """A tiny random model of ``model_type`` in eval mode, output embeddings scaled by ``head_scale``; ``overrides``
    change the config (e.g. ``vocab_size`` for a real tokenizer)."""
    config = AutoConfig.for_model(model_type, **{**FAMILIES[model_type], **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(head_scale)
    return model


def family_batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """Two right-padded rows of random tokens, prompt then response, as the collator lays them out."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, VOCAB, (2, 10), generator=generator)
    attention_mask = torch.ones(2, 10, dtype=torch.long)
    attention_mask[1, 7:] = 0
    input_ids[1, 7:] = 0
    response_mask = torch.zeros(2, 10, dtype=torch.bool)
    response_mask[0, 4:] = True
    response_mask[1, 3:7] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}
