"""Loading a large policy once under FSDP2: built on the meta device, sharded, then each process reads only its own
shards from the checkpoint's safetensors files.

``from_pretrained`` in every process reads the whole checkpoint into each (and a frozen-copy reference deep-copied
from it doubles that): for an 8B model in fp32, 64 GB of host memory per process, eight times on a node. Here the
policy's parameters are created on the meta device (no storage; buffers such as rotary frequencies are computed
for real, as they are not in the checkpoint), the frozen copy is a deep copy of that empty model (free), both are
sharded with ``fully_shard``, given storage for their shards only (``to_empty``), and each shard is filled with
the matching rows of the weight read through a safetensors slice, one weight at a time. A process so holds its
shards and one slice at a time, never the whole model; the numbers equal ``from_pretrained``'s.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors import safe_open
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from lit_align.policy import PolicySpec
from lit_align.sharding import FSDPMixedPrecision, shard_causal_lm

INDEX = "model.safetensors.index.json"


def empty_base(spec: PolicySpec) -> PreTrainedModel | None:
    """The base of ``spec`` built empty when it can be read shard by shard — a full fine-tune (a LoRA policy holds
    one copy of the base already) from a local directory of safetensors files that name every weight as the model
    does — else ``None`` (it is then loaded whole, with ``from_pretrained``)."""
    if spec.lora is not None or spec.path is None:
        return None
    files = weight_files(spec.path)
    if not files:
        return None
    model = empty_causal_lm(spec)
    return model if all(name in files for name, _ in model.named_parameters()) else None


def empty_causal_lm(spec: PolicySpec) -> PreTrainedModel:
    """The causal LM of ``spec`` with its parameters on the meta device and its buffers computed: nothing read but
    the config."""
    config = AutoConfig.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
    with init_empty_weights(include_buffers=False):
        return AutoModelForCausalLM.from_config(config, dtype=getattr(torch, spec.dtype),
                                                trust_remote_code=spec.trust_remote_code, **spec.extra)


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


def load_shards(model: nn.Module, path: str, device: torch.device) -> nn.Module:
    """Give the meta-device parameters of ``model`` (sharded with ``fully_shard``, or not) storage on ``device`` and
    fill this process's part of each from the safetensors files at ``path``. Buffers keep their values."""
    if not any(parameter.is_meta for parameter in model.parameters()):
        return model
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers() if not buffer.is_meta}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name in buffers:
                buffer.copy_(buffers[name])
        files = weight_files(path)
        for name, parameter in model.named_parameters():
            _fill(parameter, files[name], name)
    return model


def shard_and_load(model: nn.Module, mesh: DeviceMesh, mixed_precision: FSDPMixedPrecision | None,
                   path: str | None, device: torch.device) -> nn.Module:
    """FSDP2-shard ``model``; an empty one (the policy or its frozen copy, built on the meta device) then reads its
    shards from ``path``."""
    model = shard_causal_lm(model, mesh, mixed_precision)
    return load_shards(model, path, device) if path is not None else model


def _fill(parameter: nn.Parameter, file: Path, name: str) -> None:
    """Copy this process's rows of weight ``name`` from ``file`` into ``parameter`` (a DTensor shard or whole)."""
    if isinstance(parameter, DTensor):
        shape, offset = compute_local_shape_and_global_offset(parameter.shape, parameter.device_mesh,
                                                              parameter.placements)
        local = parameter.to_local()
    else:
        shape, offset, local = tuple(parameter.shape), (0,) * parameter.dim(), parameter
    if local.numel() == 0:
        return
    with safe_open(file, framework="pt") as handle:  # opened per weight: only its pages are ever mapped
        stored = handle.get_slice(name)
        rows = stored[tuple(slice(start, start + length) for start, length in zip(offset, shape, strict=True))]
    local.copy_(rows.to(local.dtype))
