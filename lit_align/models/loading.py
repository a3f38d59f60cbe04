"""Reading a causal LM's weights once, from its safetensors files, into a model built on the meta device.

``from_pretrained`` in every process, followed by a deep copy for the frozen reference, holds the checkpoint
twice per process and then some: for an 8B model in fp32, 64 GB of host memory per process, eight times on a
node. Here a model (the policy's base, and the frozen reference built the same way, never copied) is created with
its parameters on the meta device — no storage; buffers such as rotary frequencies are computed for real, as they
are not in the checkpoint — and each parameter is then filled from a safetensors slice, one weight at a time:

- without sharding (one process, DDP), at once, on the device Lightning initialises models on (a GPU under DDP,
  so host memory holds one weight at a time): :func:`load_base`;
- under FSDP2, after ``fully_shard``: each process gives storage to its shards only and reads just their rows
  (:func:`load_shards`);
- under FSDP1, as FSDP reaches each unit: its weights are read whole, flattened and sharded before the next unit
  is read (:class:`UnitLoader`, FSDP's ``param_init_fn``).

A process so holds its own part of the model plus one weight (FSDP1: one unit), never the whole checkpoint; the
numbers equal ``from_pretrained``'s. A model that cannot be read this way — a hub id, files whose weight names
differ from the model's, ``from_pretrained`` arguments a config cannot take — is loaded with ``from_pretrained``;
a model given as a config is built from it.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedModel

from lit_align.errors import ConfigError
from lit_align.models.head import VERIFIED_MODEL_TYPES
from lit_align.models.quantization import quantized_arguments, without_cpu_repacking
from lit_align.paths import resolve_local_or_hub

if TYPE_CHECKING:
    from lit_align.models.policy import PolicySpec

INDEX = "model.safetensors.index.json"
CONFIG_ARGUMENTS = frozenset({"attn_implementation"})
"""The ``extra`` ``from_pretrained`` arguments a model built from its config takes too; others (a revision, a
quantization config, a device map) are ``from_pretrained``'s to apply, so the model is loaded with it."""


def load_base(spec: PolicySpec, key: str = "model.policy.path", empty: bool = False) -> PreTrainedModel:
    """The base causal LM of ``spec`` (no adapter); ``key`` names ``spec.path`` in errors.

    Read weight by weight from its local safetensors files where it can be (:func:`empty_base`); with ``empty``,
    left on the meta device instead, for a sharding strategy to fill (:func:`load_shards`, :class:`UnitLoader`),
    unless its family's output head must first be checked on real weights
    (:func:`lit_align.models.head.check_output_head`).
    Otherwise loaded with ``from_pretrained``, or built from ``spec.config`` seeded by ``spec.init_seed``.
    """
    check_model_directory(spec.path, key)
    model = empty_base(spec)
    if model is None:
        return load_causal_lm(spec, key)
    if empty and model.config.model_type in VERIFIED_MODEL_TYPES:  # another family's head is checked on its weights
        return model
    return load_shards(model, torch.get_default_device())


def check_model_directory(path: str | None, key: str) -> None:
    """Refuse a local directory that holds no transformers model (no ``config.json``), saying what it holds."""
    if path is None or not Path(path).is_dir() or (Path(path) / "config.json").is_file():
        return
    held = sorted(entry.name for entry in Path(path).iterdir())
    hint = (" (a peft adapter: give its base model, base_model_name_or_path in adapter_config.json)"
            if "adapter_config.json" in held else "")
    raise ConfigError(key, path, f"a model directory needs config.json (save_pretrained writes it), and this one "
                                 f"has none{hint}; it holds {held[:8]}{' ...' if len(held) > 8 else ''}")


def load_causal_lm(spec: PolicySpec, key: str = "model.policy.path") -> PreTrainedModel:
    """The base causal LM of ``spec`` through transformers: ``from_pretrained`` (quantised as ``spec.quantization``
    says), or a fresh model from ``spec.config`` seeded by ``spec.init_seed`` (so a rebuilt one equals the first)."""
    dtype = getattr(torch, spec.dtype)
    if spec.path is not None:
        return without_cpu_repacking(AutoModelForCausalLM.from_pretrained(
            resolve_local_or_hub(key, spec.path), dtype=dtype, trust_remote_code=spec.trust_remote_code,
            **quantized_arguments(spec.quantization, spec.dtype), **spec.extra,
        ))
    config = dict(spec.config)
    config_class = AutoConfig.for_model(config.pop("model_type"), **config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        return AutoModelForCausalLM.from_config(config_class, dtype=dtype, **spec.extra)


def empty_base(spec: PolicySpec) -> PreTrainedModel | None:
    """The base of ``spec`` built empty (:func:`empty_causal_lm`) when its weights can be read one by one: from a
    local directory of safetensors files that name every weight as the model does, unquantised; else ``None``."""
    if spec.path is None or spec.quantization is not None or not set(spec.extra) <= CONFIG_ARGUMENTS:
        return None
    files = weight_files(spec.path)
    if not files:
        return None
    model = empty_causal_lm(spec)
    return model if all(name in files for name, _ in model.named_parameters()) else None


def empty_causal_lm(spec: PolicySpec) -> PreTrainedModel:
    """The causal LM at ``spec.path`` with its parameters on the meta device (tied ones tied), its buffers
    computed and its generation config read: nothing read but the configs."""
    config = AutoConfig.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, spec.dtype),
                                                 trust_remote_code=spec.trust_remote_code, **spec.extra)
    model.tie_weights()
    return with_generation_config(model, spec.path)


def with_generation_config(model: PreTrainedModel, path: str) -> PreTrainedModel:
    """``model`` with the generation config saved at ``path``, as ``from_pretrained`` gives it; where there is none,
    the one derived from the model's config stays."""
    try:
        model.generation_config = GenerationConfig.from_pretrained(path)
    except OSError:
        pass
    return model


def weight_files(path: str) -> dict[str, Path]:
    """Each weight's safetensors file in the local directory ``path`` (empty when it has none)."""
    directory = Path(path)
    if (directory / INDEX).is_file():
        index = json.loads((directory / INDEX).read_text())["weight_map"]
        return {name: directory / file for name, file in index.items()}
    single = directory / "model.safetensors"
    if not single.is_file():
        return {}
    with safe_open(single, framework="pt") as handle:
        return dict.fromkeys(handle.keys(), single)


def is_empty(model: nn.Module) -> bool:
    """Whether ``model`` still has parameters on the meta device, to be read later (:func:`load_base` with
    ``empty``)."""
    return any(parameter.is_meta for parameter in model.parameters())


def load_shards(model: PreTrainedModel, device: torch.device) -> PreTrainedModel:
    """Give the meta-device parameters of ``model`` (sharded with ``fully_shard``, or not) storage on ``device``
    and fill this process's part of each from the safetensors files at ``model.name_or_path``. Buffers keep their
    values; tied weights stay tied."""
    if not is_empty(model):
        return model
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers() if not buffer.is_meta}
    model.to_empty(device=device)
    model.tie_weights()  # to_empty gives each module a parameter of its own
    files = weight_files(model.name_or_path)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name in buffers:
                buffer.copy_(buffers[name])
        for name, parameter in model.named_parameters():
            _fill(parameter, files[name], name)
    return model


class UnitLoader:
    """FSDP1's ``param_init_fn`` for an empty model (:func:`load_base` with ``empty``): FSDP calls it on each
    module of a unit before flattening and sharding that unit, and it gives the module's own meta-device
    parameters their whole weights from the safetensors files at ``model.name_or_path`` (a weight shared by
    several modules, as tied embeddings, is read once and stays shared). Modules outside ``model`` are left
    alone."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.path = model.name_or_path
        self.sharers: dict[nn.Parameter, list[tuple[nn.Module, str]]] = {}
        self.names: dict[nn.Parameter, str] = {}
        for prefix, module in model.named_modules():
            for name, parameter in module.named_parameters(recurse=False):
                self.sharers.setdefault(parameter, []).append((module, name))
                self.names.setdefault(parameter, f"{prefix}.{name}" if prefix else name)

    def __call__(self, module: nn.Module) -> None:
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.is_meta and parameter in self.sharers:
                setattr(module, name, self._loaded(parameter))

    @cached_property
    def files(self) -> dict[str, Path]:
        return weight_files(self.path)

    def _loaded(self, meta: nn.Parameter) -> nn.Parameter:
        """``meta``'s weight: as already read for another module sharing it, else read now."""
        for module, name in self.sharers[meta]:
            current = getattr(module, name)
            if not current.is_meta:
                return current
        weight = _read(self.files[self.names[meta]], self.names[meta], (0,) * meta.dim(), meta.shape)
        return nn.Parameter(weight.to(meta.dtype), requires_grad=meta.requires_grad)


def _fill(parameter: torch.Tensor, file: Path, name: str) -> None:
    """Copy this process's rows of weight ``name`` from ``file`` into ``parameter`` (a DTensor shard or whole)."""
    if isinstance(parameter, DTensor):
        # DTensor's chunk protocol (torch.distributed.checkpoint reads any tensor-like object through it): the
        # offset and size of this process's block of the global weight.
        [chunk] = parameter.__create_chunk_list__()
        shape, offset = tuple(chunk.sizes), tuple(chunk.offsets)
        local = parameter.to_local()
    else:
        shape, offset, local = tuple(parameter.shape), (0,) * parameter.dim(), parameter
    if local.numel() > 0:
        local.copy_(_read(file, name, offset, shape))


def _read(file: Path, name: str, offset: tuple[int, ...], shape: tuple[int, ...]) -> torch.Tensor:
    """The block of weight ``name`` in ``file`` at ``offset`` of ``shape``, as stored."""
    with safe_open(file, framework="pt") as handle:  # opened per weight: only its pages are ever mapped
        stored = handle.get_slice(name)
        return stored[tuple(slice(start, start + length) for start, length in zip(offset, shape, strict=True))]
