"""A run's manifest: the resolved settings that decide what its steps compute, the content of what it reads, and
the package versions — written into every checkpoint, compared before a resume and across processes.

The manifest is a nested dict of plain data:

- ``model``: the module's hyperparameters (with LightningCLI: its whole parsed config — objective and its
  arguments, policy with its LoRA settings, reference, optimizer, schedule; built from Python, the objects are
  described by class and attributes);
- ``data``: the data module's class and hyperparameters (source, layout, tokenizer, lengths, batch size, seed);
- ``trainer``: what of the trainer changes a step (accumulation, precision, clipping, world size and the global
  batch) and what does not (max_steps, max_epochs);
- ``content``: fingerprints of what the settings point at — every local data file (hashed whole: another file
  under the same path is another run), the tokenizer's files, and the policy's starting weights (a strided
  sample of each weight file and its size: a fine-tune differs everywhere);
- ``versions``: torch, transformers, lightning, peft, datasets and lit-align.

:func:`changes` compares two manifests key by key. Keys that cannot change what a step computes (:data:`FREE`)
are only noticed; every other change is refused unless allowed by name.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch

Manifest = dict[str, Any]

FREE = ("trainer.max_steps", "trainer.max_epochs", "trainer.world_size", "data.batch_size", "data.eval_batch_size",
        "data.num_workers", "data.num_proc", "versions")
"""Dotted keys (and their subkeys) whose change cannot alter a step: the run's length, the process count and the
per-process batch while ``trainer.global_batch`` stays, loader workers, package versions."""
DATA_KEYS = ("path", "val_path", "data_files", "data_dir")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "chat_template.jinja", "chat_template.json")
PACKAGES = ("torch", "transformers", "lightning", "peft", "datasets", "lit-align")
WEIGHT_SAMPLES = 64
SAMPLE_BYTES = 1 << 16


class Change(NamedTuple):
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {describe(self.old)} -> {describe(self.new)}"


def run_manifest(trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule | None) -> Manifest:
    """The manifest of ``module`` trained by ``trainer`` on ``datamodule``."""
    data = {"class_path": _class_path(datamodule), **plain(dict(datamodule.hparams))} if datamodule else {}
    batch = data.get("batch_size", 1)
    return {
        "model": {**plain(dict(module.hparams)), **_objects_of(module)},
        "data": data,
        "trainer": {
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "precision": str(trainer.precision),
            "gradient_clip_val": trainer.gradient_clip_val,
            "gradient_clip_algorithm": str(trainer.gradient_clip_algorithm),
            "world_size": trainer.world_size,
            "global_batch": trainer.world_size * batch * trainer.accumulate_grad_batches,
            "max_steps": trainer.max_steps,
            "max_epochs": trainer.max_epochs,
        },
        "content": content_fingerprints(module, data),
        "versions": {name: _version(name) for name in PACKAGES},
    }


def changes(old: Manifest, new: Manifest) -> list[Change]:
    """Every key whose value differs, as ``Change(dotted key, old, new)``; a class path that changes reports its
    whole block (``model.objective: DPO(beta=0.1) -> FDPO(beta=0.1, divergence=js)``)."""
    if old == new:
        return []
    if not (isinstance(old, dict) and isinstance(new, dict)) or old.get("class_path") != new.get("class_path"):
        return [Change("", old, new)]
    found = []
    for key in sorted(set(old) | set(new), key=str):
        for change in changes(old.get(key, MISSING), new.get(key, MISSING)):
            found.append(change._replace(key=f"{key}.{change.key}".strip(".").replace(".init_args", "")))
    return found


def is_free(key: str) -> bool:
    return any(key == free or key.startswith(f"{free}.") for free in FREE)


def is_allowed(key: str, allowed: list[str]) -> bool:
    """Whether ``key`` is one of ``allowed`` or lies under one of them."""
    return any(key == name or key.startswith(f"{name}.") for name in allowed)


def describe(value: Any) -> str:
    """A value as a user wrote it: ``DPO(beta=0.1)`` for a class block, ``<unset>`` for a missing key."""
    if value is MISSING:
        return "<unset>"
    if isinstance(value, dict) and "class_path" in value:
        arguments = ", ".join(f"{k}={describe(v)}" for k, v in sorted((value.get("init_args") or {}).items()))
        return f"{str(value['class_path']).rsplit('.', 1)[-1]}({arguments})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in value.items()) + "}"
    return repr(value) if isinstance(value, str) else str(value)


def content_fingerprints(module: L.LightningModule, data: dict[str, Any]) -> dict[str, str]:
    """Fingerprints of the local files the settings name: data (whole), tokenizer files, policy weights."""
    found = {}
    for key, value in _walk(data):
        if key.rsplit(".", 1)[-1] in DATA_KEYS and (files := _local_files(value)):
            found[f"data.{key}"] = _digest(files, whole=True)
    tokenizer = data.get("tokenizer")
    if isinstance(tokenizer, str) and Path(tokenizer).is_dir():
        found["tokenizer"] = _digest([Path(tokenizer) / name for name in TOKENIZER_FILES
                                      if (Path(tokenizer) / name).is_file()], whole=True)
    policy = getattr(getattr(module, "policy_spec", None), "path", None)
    if isinstance(policy, str) and Path(policy).is_dir():
        files = sorted(p for p in Path(policy).iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        found["policy_weights"] = _digest(files, whole=False)
    return found


def _digest(files: list[Path], whole: bool) -> str:
    """blake2b of ``files``: whole, or each file's size, head and ``WEIGHT_SAMPLES`` strided samples."""
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}|{size}|".encode())
        with open(path, "rb") as handle:
            if whole or path.suffix == ".json" or size <= WEIGHT_SAMPLES * SAMPLE_BYTES:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
                continue
            for sample in range(WEIGHT_SAMPLES):
                handle.seek(sample * (size - SAMPLE_BYTES) // (WEIGHT_SAMPLES - 1))
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


class _Missing:
    def __repr__(self) -> str:
        return "<unset>"


MISSING = _Missing()


def plain(value: Any) -> Any:
    """``value`` as JSON-like plain data: dataclasses as dicts, objects by class path and attributes."""
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.tolist() if value.numel() <= 16 else f"tensor{tuple(value.shape)}"
    attributes = {k: plain(v) for k, v in getattr(value, "__dict__", {}).items()
                  if not k.startswith("_") and k != "training"}
    return {"class_path": _class_path(value), "init_args": {k: v for k, v in attributes.items()
                                                             if not isinstance(v, dict) or "class_path" not in v}}


def _objects_of(module: L.LightningModule) -> dict[str, Any]:
    """The module's objective, built from Python (so not among its plain hyperparameters), described."""
    objective = getattr(module, "objective", None)
    if objective is None or "objective" in module.hparams:
        return {}
    return {"objective": plain(objective)}


def _class_path(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _walk(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [pair for k, v in value.items() for pair in _walk(v, f"{prefix}.{k}".strip("."))]
    if isinstance(value, list):
        return [pair for v in value for pair in _walk(v, prefix)]
    return [(prefix, value)]


def _local_files(value: Any) -> list[Path]:
    paths = [Path(v) for v in (value if isinstance(value, list) else [value]) if isinstance(v, str)]
    files = []
    for path in paths:
        if path.is_file():
            files.append(path.resolve())
        elif path.is_dir():
            files += sorted(p.resolve() for p in path.rglob("*") if p.is_file())
    return files


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
