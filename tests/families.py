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
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from lit_align.models.families import FAMILIES as REGISTRY

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

SWA: dict[str, Any] = dict(COMMON, head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"])
"""Two layers, one sliding (window 4, shorter than the rows) and one full."""
MOE: dict[str, Any] = dict(num_local_experts=4, num_experts_per_tok=2)
MAMBA: dict[str, Any] = dict(mamba_n_heads=4, mamba_d_head=16, mamba_d_state=8, mamba_n_groups=1, mamba_d_conv=4,
                             mamba_expand=2, mamba_chunk_size=4)

FAMILIES: dict[str, dict[str, Any]] = {
    "llama": COMMON,
    "mistral": COMMON,
    "mixtral": {**COMMON, **MOE},
    "qwen2": COMMON,
    "qwen3": {**COMMON, "head_dim": 8},
    "gemma": {**COMMON, "head_dim": 8},
    "phi3": COMMON,
    "olmo2": COMMON,
    "gpt2": GPT2,
    "gpt_neox": {**COMMON, "rotary_pct": 0.5},
    "gemma2": {**COMMON, "head_dim": 8, "final_logit_softcapping": 5.0, "attn_logit_softcapping": 50.0},
    "gemma3_text": {**COMMON, "head_dim": 8, "final_logit_softcapping": 5.0, "sliding_window": 4},
    "gemma3n_text": {**SWA, "final_logit_softcapping": 5.0, "num_kv_shared_layers": 0, "laurel_rank": 4,
                     "hidden_size_per_layer_input": 8, "altup_num_inputs": 2, "activation_sparsity_pattern": [0.0, 0.0],
                     "intermediate_size": [64, 64], "vocab_size_per_layer_input": VOCAB},
    "vaultgemma": {**SWA, "final_logit_softcapping": 5.0},
    "nanochat": {**COMMON, "final_logit_softcapping": 5.0},
    "beam": {**SWA, "final_logit_softcapping": 5.0, "num_experts": 4, "num_experts_per_tok": 2,
             "moe_intermediate_size": 16, "mlp_layer_types": ["dense", "sparse"], "n_group": 1, "topk_group": 1},
    "recurrent_gemma": {**COMMON, "num_hidden_layers": 3, "lru_width": 32, "attention_window_size": 4,
                        "num_key_value_heads": 1, "head_dim": 8, "logits_soft_cap": 5.0,
                        "block_types": ["recurrent", "recurrent", "attention"]},
    "cohere": {**COMMON, "logit_scale": 0.25},
    "cohere2": {**SWA, "logit_scale": 0.25},
    "cohere2_moe": {**SWA, "logit_scale": 0.25, "num_experts": 4, "num_experts_per_tok": 2,
                    "mlp_layer_types": ["sparse", "sparse"]},
    "cohere_compass_text": {**COMMON, "head_dim": 8, "logit_scale": 0.25, "layer_types": ["full_attention"] * 2,
                            "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4}}},
    "falcon_h1": {**COMMON, **MAMBA, "head_dim": 8, "mamba_d_ssm": 64, "lm_head_multiplier": 0.25},
    "hyperclovax": {**COMMON, "logits_scaling": 0.25},
    "granite": {**COMMON, "logits_scaling": 4.0},
    "granitemoe": {**COMMON, **MOE, "logits_scaling": 4.0},
    "granitemoeshared": {**COMMON, **MOE, "shared_intermediate_size": 32, "logits_scaling": 4.0},
    "granitemoehybrid": {**COMMON, **MOE, **MAMBA, "shared_intermediate_size": 32, "logits_scaling": 4.0,
                         "layer_types": ["mamba", "attention"]},
    "granite_swa": {**SWA, "logits_scaling": 4.0},
    "granitemoe_swa": {**SWA, **MOE, "logits_scaling": 4.0},
    "minicpm3": {**COMMON, "num_key_value_heads": 4, "q_lora_rank": 16, "kv_lora_rank": 8, "qk_nope_head_dim": 8,
                 "qk_rope_head_dim": 4, "v_head_dim": 8, "dim_model_base": 4},  # logits_scaling = 32 / 4
}
FAMILIES = {name: config for name, config in FAMILIES.items() if name in CONFIG_MAPPING}
"""Only the families the installed transformers ships (CI's lower-bounds environment has transformers 5.0, which
lacks beam, cohere2_moe, cohere_compass_text, granite_swa, granitemoe_swa, hyperclovax and minicpm3)."""
"""Keyword arguments of ``AutoConfig.for_model`` per ``model_type``: one row per verified family of the registry
(:data:`lit_align.models.families.FAMILIES`)."""

MAMBA_FAMILIES = ("falcon_h1", "granitemoehybrid")
"""Families with Mamba layers, whose ``out_proj`` and ``conv1d`` peft refuses to adapt."""
NOT_ONE_RESIDUAL = {"gemma3n_text": "its layers carry AltUp streams, (streams, batch, time, hidden)"}
"""Families whose layer output is not one ``(batch, time, hidden)`` residual stream, so the SAE hook's test (which
compares per token) does not apply."""

POST_HEAD_FAMILIES = tuple(name for name in FAMILIES if REGISTRY[name].post_head is not None)
"""Families whose forward transforms the logits around the LM head (in these configs, far from neutral)."""


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
