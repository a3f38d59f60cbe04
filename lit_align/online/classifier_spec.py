"""The reward model's network: a transformers sequence-classification model with one output, built from a causal LM
(the SFT model a user already has: its decoder, and a new score head), a sequence-classification checkpoint, or a
config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from lit_align.errors import ConfigError
from lit_align.models.loading import check_model_directory
from lit_align.models.policy import DType
from lit_align.paths import absolute_if_local, resolve_local_or_hub


@dataclass
class ClassifierSpec:
    """Where the reward model comes from and how it is built (``model.classifier`` in a config)."""

    path: str | None = None
    """A causal LM (its decoder is read, the score head is new) or a sequence-classification model (read whole),
    as a local directory or hub id."""
    config: dict[str, Any] | None = None
    """A transformers config as a dict (with ``model_type``) to build a fresh model; used when ``path`` is unset."""
    dtype: DType = "float32"
    trust_remote_code: bool = False
    """Run model code from the hub; off unless asked for."""
    init_seed: int = 0
    """Seed of the new score head (and of a fresh model's weights)."""
    gradient_checkpointing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Further keyword arguments to ``from_pretrained`` (e.g. ``attn_implementation``)."""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.config is None):
            raise ConfigError("model.classifier.path", self.path, "set exactly one of model.classifier.path (a causal "
                              "LM or a sequence-classification model) and model.classifier.config (a config dict)")
        if self.path is not None:
            self.path = absolute_if_local(self.path)
        elif "model_type" not in self.config:
            raise ConfigError("model.classifier.config", self.config, "a transformers config dict with a model_type")


def build_classifier(spec: ClassifierSpec) -> PreTrainedModel:
    """The sequence-classification model of ``spec`` with one output (``num_labels: 1``), in training mode, its
    new weights seeded by ``spec.init_seed``; weights read weights-only."""
    dtype = getattr(torch, spec.dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        if spec.path is None:
            config = dict(spec.config)
            config = AutoConfig.for_model(config.pop("model_type"), num_labels=1, **config)
            model = AutoModelForSequenceClassification.from_config(config, dtype=dtype, **spec.extra)
        else:
            check_model_directory(spec.path, "model.classifier.path")
            model = AutoModelForSequenceClassification.from_pretrained(
                resolve_local_or_hub("model.classifier.path", spec.path), num_labels=1, dtype=dtype,
                trust_remote_code=spec.trust_remote_code, weights_only=True, **spec.extra)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model.train()
