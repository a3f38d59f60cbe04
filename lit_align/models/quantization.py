"""A quantised base for QLoRA (Dettmers et al. 2023): the policy's base read in 4-bit NF4 (or 8-bit) through
transformers' ``BitsAndBytesConfig``, prepared for k-bit training, with a trainable adapter on top.

The adapter's reference (``DisabledAdapter``) runs on the same quantised base, so the model sits in memory once,
in about a quarter of its bf16 size. Export writes the adapter, or with ``merge`` the adapter folded into the
base read again in full precision (the usual QLoRA release: the 4-bit weights are a training-time compression).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch
from peft import prepare_model_for_kbit_training
from torch import nn
from transformers import BitsAndBytesConfig

from lit_align.errors import ConfigError

ComputeDType = Literal["float32", "bfloat16", "float16"]


@dataclass
class Quantization:
    """How the base is quantised (bitsandbytes, through transformers' ``BitsAndBytesConfig``)."""

    bits: Literal[4, 8] = 4
    """4 (QLoRA) or 8 (LLM.int8())."""
    quant_type: Literal["nf4", "fp4"] = "nf4"
    """The 4-bit data type: NF4, the normal-float type of QLoRA, or plain FP4."""
    double_quant: bool = True
    """Quantise the quantisation constants too (QLoRA's double quantisation: about 0.37 bits per weight saved)."""
    compute_dtype: ComputeDType | None = None
    """The dtype 4-bit layers compute in; default the policy's ``dtype``."""

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ConfigError("model.policy.quantization.bits", self.bits, "4 or 8")

    def bitsandbytes_config(self, dtype: str) -> BitsAndBytesConfig:
        """transformers' ``BitsAndBytesConfig`` for these settings, computing in ``compute_dtype`` or ``dtype``."""
        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=self.quant_type,
                                  bnb_4bit_use_double_quant=self.double_quant,
                                  bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype or dtype))


def quantized_arguments(quantization: Quantization | None, dtype: str) -> dict:
    """``from_pretrained``'s arguments that quantise the base on load (none without ``quantization``): the
    bitsandbytes config, and the device the model is built on (the one Lightning initialises models on)."""
    if quantization is None:
        return {}
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("model.policy.quantization", quantization, "bitsandbytes, which quantises the base: "
                          "pip install 'lit-align[qlora]'")
    return {"quantization_config": quantization.bitsandbytes_config(dtype),
            "device_map": {"": torch.get_default_device()}}


def without_cpu_repacking(model: nn.Module) -> nn.Module:
    """``model`` with bitsandbytes' CPU repacking of 4-bit layers turned off. On a CPU with AVX512-BF16, a
    ``Linear4bit`` run in eval mode without gradients rewrites its weight in place into a packed layout whose
    scales are rounded to bf16: the reference (eval, no gradients) would then compute with other weights than the
    policy's training forward, and layers narrower than a 64-wide block fail to repack."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def prepare_for_adapter(model: nn.Module, gradient_checkpointing: bool) -> nn.Module:
    """peft's ``prepare_model_for_kbit_training`` (the quantised base frozen, its norms and head kept in fp32,
    input gradients enabled for checkpointing), with the frozen base kept out of checkpoints
    (:func:`keep_base_out_of_checkpoints`); a model that is not quantised is returned as it is."""
    if not getattr(model, "is_quantized", False):
        return model
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    keep_base_out_of_checkpoints(model)
    return model


def keep_base_out_of_checkpoints(model: nn.Module) -> None:
    """Keep a quantised base's frozen weights out of ``model``'s state dict, so that checkpoints hold what trains
    (the adapter, which peft injects into ``model``) and a resume reads the base from its files again, as the run
    did: bitsandbytes' 4-bit weights do not load back through ``load_state_dict`` (their quantisation state is
    refused as unexpected keys), and they never change. Loading, the frozen entries a checkpoint lacks are not
    missing; a trainable one still is."""
    where = {"prefix": ""}

    def trainable(prefix: str) -> set[str]:
        return {prefix + name for name, parameter in model.named_parameters() if parameter.requires_grad}

    def drop_frozen(module: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
        keep = trainable(prefix)
        for name in [name for name in state if name.startswith(prefix) and name not in keep]:
            del state[name]

    def note_prefix(module: nn.Module, state: dict, prefix: str, *args) -> None:
        where["prefix"] = prefix

    def allow_frozen_missing(module: nn.Module, incompatible) -> None:
        prefix, keep = where["prefix"], trainable(where["prefix"])
        for name in [name for name in incompatible.missing_keys if name.startswith(prefix) and name not in keep]:
            incompatible.missing_keys.remove(name)

    model.register_state_dict_post_hook(drop_frozen)
    model.register_load_state_dict_pre_hook(note_prefix)
    model.register_load_state_dict_post_hook(allow_frozen_missing)
