"""The policy: a transformers causal LM from a local path or a config, optionally with a peft LoRA adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from jsonargparse.typing import NonNegativeFloat, PositiveInt
from peft import PeftConfig
from torch import nn

from lit_align.errors import ConfigError
from lit_align.models.adapters import add_adapter
from lit_align.models.head import OutputHead, check_output_head, final_hidden, output_head
from lit_align.models.loading import load_base, load_causal_lm
from lit_align.models.quantization import Quantization, prepare_for_adapter
from lit_align.paths import absolute_if_local

__all__ = ["DType", "LoraSettings", "PolicySpec", "Quantization", "build_policy", "final_hidden", "lm_head",
           "load_causal_lm"]

DType = Literal["float32", "bfloat16", "float16"]


@dataclass
class LoraSettings:
    """A peft LoRA adapter on the policy; the reference is then the base with the adapter disabled."""

    r: PositiveInt = 8
    """Rank of the update."""
    alpha: PositiveInt = 16
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: NonNegativeFloat = 0.0
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt, or ``all-linear``."""

    def __post_init__(self) -> None:
        for name in ("r", "alpha"):
            if not getattr(self, name) >= 1:
                raise ConfigError(f"model.policy.lora.{name}", getattr(self, name), "an integer >= 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError("model.policy.lora.dropout", self.dropout, "a probability in [0, 1)")


@dataclass
class PolicySpec:
    """Where the policy comes from and how it is built."""

    path: str | None = None
    """Local directory (or hub id) for ``from_pretrained``; a local one is recorded as an absolute path."""
    config: dict[str, Any] | None = None
    """A transformers config as a dict (with ``model_type``) to build a fresh model; used when ``path`` is unset."""
    dtype: DType = "float32"
    gradient_checkpointing: bool = False
    lora: LoraSettings | None = None
    """A LoRA adapter by its four common settings (the shorthand for ``peft``)."""
    peft: PeftConfig | None = None
    """Any peft adapter, by ``class_path`` (``peft.LoraConfig`` with ``use_dora``, ``use_rslora`` or
    ``init_lora_weights: pissa``, ``peft.IA3Config``, ``peft.LoHaConfig``, ...); instead of ``lora``."""
    quantization: Quantization | None = None
    """Read the base quantised (4-bit NF4 or 8-bit, bitsandbytes) and train an adapter on it: QLoRA."""
    trust_remote_code: bool = False
    """Run model code from the hub; off unless asked for."""
    init_seed: int = 0
    """Seed of a fresh model's weights and of the LoRA adapter's initialisation (so a rebuilt reference equals the
    original one, and every process of a sharded run starts from the same adapter)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further keyword arguments to ``from_pretrained`` (e.g. ``attn_implementation``)."""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.config is None):
            given = "both are set" if self.path is not None else "neither is set"
            raise ConfigError("model.policy.path", self.path, "set exactly one of model.policy.path (a local "
                              f"directory or hub id) and model.policy.config (a transformers config dict); {given}")
        if self.path is not None:
            self.path = absolute_if_local(self.path)
        elif "model_type" not in self.config:
            raise ConfigError("model.policy.config", self.config, "a transformers config dict with a model_type")
        if self.lora is not None and self.peft is not None:
            raise ConfigError("model.policy.peft", type(self.peft).__name__, "one adapter: set model.policy.lora "
                              "(the LoRA shorthand) or model.policy.peft (any peft config), not both")
        if self.quantization is not None and self.path is None:
            raise ConfigError("model.policy.quantization", self.quantization, "a model read from model.policy.path "
                              "(bitsandbytes quantises weights as from_pretrained reads them), not a config")

    @property
    def adapted(self) -> bool:
        """Whether the policy trains an adapter (``lora`` or ``peft``) on a frozen base."""
        return self.lora is not None or self.peft is not None


def build_policy(spec: PolicySpec, empty: bool = False) -> nn.Module:
    """Build the policy in ``spec.dtype``, with gradient checkpointing and the LoRA adapter if asked for, around
    its base read once (:func:`lit_align.models.loading.load_base`; with ``empty``, left on the meta device to be read
    shard by shard after sharding); refuse a model whose logits lit-align cannot reproduce
    (:func:`lit_align.models.head.check_output_head`)."""
    if spec.quantization is not None and not spec.adapted:
        raise ConfigError("model.policy.quantization", spec.quantization, "an adapter to train on the quantised "
                          "base: set model.policy.lora or model.policy.peft")
    model = load_base(spec, empty=empty)
    check_output_head(model)
    model = prepare_for_adapter(model, spec.gradient_checkpointing)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return add_adapter(model, spec)


def lm_head(model: nn.Module) -> OutputHead:
    """The output head of a causal LM (through a peft or FSDP wrapper): its output embeddings followed by its
    family's post-head transform, so ``lm_head(model)(final_hidden(model, ...))`` are ``model(...).logits``."""
    return output_head(model)
