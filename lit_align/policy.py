"""The policy: a transformers causal LM from a local path or a config, optionally with a peft LoRA adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from lit_align.head import OutputHead, check_output_head, final_hidden, output_head

__all__ = ["DType", "LoraSettings", "PolicySpec", "build_policy", "final_hidden", "lm_head", "load_causal_lm"]

DType = Literal["float32", "bfloat16", "float16"]


@dataclass
class LoraSettings:
    """A peft LoRA adapter on the policy; the reference is then the base with the adapter disabled."""

    r: int = 8
    """Rank of the update."""
    alpha: int = 16
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or ``all-linear``."""


@dataclass
class PolicySpec:
    """Where the policy comes from and how it is built."""

    path: str | None = None
    """Local directory (or hub name) for ``from_pretrained``."""
    config: dict[str, Any] | None = None
    """A transformers config as a dict (with ``model_type``) to build a fresh model; used when ``path`` is unset."""
    dtype: DType = "float32"
    gradient_checkpointing: bool = False
    lora: LoraSettings | None = None
    trust_remote_code: bool = False
    """Run model code from the hub; off unless asked for."""
    init_seed: int = 0
    """Seed of a fresh model's weights and of the LoRA adapter's initialisation (so a rebuilt reference equals the
    original one, and every process of a sharded run starts from the same adapter)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further keyword arguments to ``from_pretrained`` (e.g. ``attn_implementation``)."""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.config is None):
            raise ValueError("set exactly one of policy.path and policy.config")


def build_policy(spec: PolicySpec) -> nn.Module:
    """Build the policy in ``spec.dtype``, with gradient checkpointing and the LoRA adapter if asked for; refuse a
    model whose logits lit-align cannot reproduce (:func:`lit_align.head.check_output_head`)."""
    model = load_causal_lm(spec)
    check_output_head(model)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if spec.lora is not None:
        lora = spec.lora
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=lora.target_modules, task_type="CAUSAL_LM")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.init_seed)
            model = get_peft_model(model, config)
    return model


def load_causal_lm(spec: PolicySpec) -> PreTrainedModel:
    """The base causal LM of ``spec``, without adapter."""
    dtype = getattr(torch, spec.dtype)
    if spec.path is not None:
        return AutoModelForCausalLM.from_pretrained(
            spec.path, dtype=dtype, trust_remote_code=spec.trust_remote_code, **spec.extra
        )
    config = dict(spec.config)
    config_class = AutoConfig.for_model(config.pop("model_type"), **config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        return AutoModelForCausalLM.from_config(config_class, dtype=dtype, **spec.extra)


def lm_head(model: nn.Module) -> OutputHead:
    """The output head of a causal LM (through a peft or FSDP wrapper): its output embeddings followed by its
    family's post-head transform, so ``lm_head(model)(final_hidden(model, ...))`` are ``model(...).logits``."""
    return output_head(model)
