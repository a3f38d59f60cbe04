"""``lit-align export``: a trained policy out of a Lightning checkpoint, as a ``save_pretrained`` directory.

A checkpoint holds the policy's weights under ``policy.`` (a single file, or a directory of shards written by
FSDP1 or FSDP2 with ``torch.distributed.checkpoint``) and, when the run came from the CLI, the policy's settings
(``hyper_parameters.policy``). Export builds an empty model of the right shape from those settings (the
transformers config only, no weights read), copies the trained weights into it — a single file memory-mapped, a
sharded directory read shard by shard by one process, so no training process ever holds the full model — and
writes what an inference stack reads: safetensors weights, ``config.json``, ``generation_config.json`` and the
tokenizer. A LoRA run writes its adapter alone (peft's format), or with ``merge`` the adapter folded into the base.

The output directory ends holding exactly one model: a non-empty one is refused unless ``overwrite``, and the new
content is written beside it and swapped in whole (:mod:`lit_align.atomic_dir`), so a full disk or a kill leaves
the old content or nothing, never a mix, and the files take the modes of the user's umask.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from peft import PeftModel
from safetensors import SafetensorError
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights

from lit_align.atomic_dir import replacing_directory, target_refusal
from lit_align.errors import ConfigError
from lit_align.identity.checkpoints import IDENTITY, read_identity, verify
from lit_align.models.loading import with_generation_config
from lit_align.models.policy import DType, LoraSettings, PolicySpec, add_adapter

RUN_FILE = "lit_align_run.json"  # the manifest of the run that trained an exported model
METADATA_FILE = "meta.pt"  # Lightning's name for the non-tensor part of a sharded checkpoint
SHARDED_KEYS = ("state_dict", "model")  # where FSDP2 (ModelParallelStrategy) and FSDP1 (FSDPStrategy) put weights


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's contents, weights-only: a file memory-mapped (weights under ``state_dict``), a sharded
    directory's metadata alone (``meta.pt``; its weights are read by :func:`load_policy_weights`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError("ckpt_path", str(path), "no checkpoint there (a .ckpt file or a sharded directory)")
    if path.is_dir() and not (path / METADATA_FILE).is_file():
        raise ConfigError("ckpt_path", str(path), f"a directory without {METADATA_FILE}: no sharded checkpoint")
    verify(path)  # a damaged checkpoint is refused, naming the file, before anything is exported from it
    return read_identity(path)[1]


def policy_spec(checkpoint: dict[str, Any], overrides: dict[str, Any] | None = None) -> PolicySpec:
    """The policy's settings stored in ``checkpoint`` (``hyper_parameters.policy``), updated with ``overrides``."""
    stored = checkpoint.get("hyper_parameters", {}).get("policy")
    settings = {**_as_dict(stored), **(overrides or {})}
    if not settings.get("path") and not settings.get("config"):
        raise ValueError(
            "the checkpoint names no policy (a module built in Python keeps its PolicySpec out of the checkpoint): "
            "give it, e.g. --policy '{\"path\": \"/models/sft\"}' (and \"lora\" for a LoRA run)"
        )
    if settings.get("path") and settings.get("config"):
        settings.pop("config" if overrides and "path" in overrides else "path")
    if isinstance(settings.get("lora"), dict):
        settings["lora"] = LoraSettings(**settings["lora"])
    return PolicySpec(**settings)


def empty_policy(spec: PolicySpec) -> nn.Module:
    """The policy of ``spec`` (adapter included) with uninitialised weights: the config is read, no weights are."""
    if spec.path is not None:
        config = AutoConfig.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
    else:
        settings = dict(spec.config)
        config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, spec.dtype),
                                                 trust_remote_code=spec.trust_remote_code)
    if spec.path is not None:
        model.name_or_path = spec.path
        with_generation_config(model, spec.path)
    return add_adapter(model, spec)


def load_policy_weights(path: str | Path, checkpoint: dict[str, Any], model: nn.Module) -> nn.Module:
    """Copy the policy's weights from the checkpoint at ``path`` (``checkpoint`` as :func:`read_checkpoint` read
    it) into ``model``, checking that every weight is covered."""
    target = {f"policy.{name}": value for name, value in model.state_dict().items()}
    if Path(path).is_dir():
        stored = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        prefix = next((key for key in SHARDED_KEYS if any(name.startswith(f"{key}.policy.") for name in stored)),
                      None)
        if prefix is None:
            raise ValueError(f"{path} holds no policy weights (no '<state_dict|model>.policy.*' entries)")
        present = {name: value for name, value in target.items() if f"{prefix}.{name}" in stored}
        dcp.load({prefix: present}, checkpoint_id=str(path), no_dist=True)  # in place, shard by shard
        loaded = present
    else:
        loaded = {name: value for name, value in checkpoint["state_dict"].items() if name.startswith("policy.")}
        with torch.no_grad():
            for name, value in loaded.items():
                if name in target:
                    target[name].copy_(value)
    _check_covered(model, target, loaded)
    return model


def write_pretrained(model: nn.Module, output_dir: str | Path, tokenizer: str | PreTrainedTokenizerBase | None,
                     merge: bool = False, dtype: DType | None = None, keep: Callable[[Path], bool] | None = None,
                     manifest: dict[str, Any] | None = None) -> Path:
    """``save_pretrained`` ``model`` (safetensors), in ``dtype`` if given, with ``tokenizer`` (a path, or a
    tokenizer) as the whole new content of ``output_dir``: written beside it and swapped in, so nothing of an
    earlier model stays (but the entries ``keep`` selects) and a failure leaves the old content. A peft model is
    written as its adapter alone, or folded into its base with ``merge``. The manifest of the run that trained it
    goes beside, as ``lit_align_run.json``. Whether ``output_dir`` may be replaced is the caller's to check first
    (:func:`~lit_align.atomic_dir.target_refusal`)."""
    if merge and isinstance(model, PeftModel):
        model = model.merge_and_unload()
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    if isinstance(tokenizer, str):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    with replacing_directory(output_dir, keep) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if manifest is not None:
            (staging / RUN_FILE).write_text(json.dumps(manifest, indent=1, default=str) + "\n")
    return Path(output_dir)


def export_checkpoint(
    ckpt_path: str,
    output_dir: str,
    policy: dict[str, Any] | None = None,
    tokenizer: str | None = None,
    merge: bool = False,
    dtype: DType | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the policy of a Lightning checkpoint as a ``save_pretrained`` directory.

    Args:
        ckpt_path: a checkpoint file, or a sharded checkpoint directory (FSDP1 or FSDP2).
        output_dir: where to write the model (or, for a LoRA run without ``merge``, the adapter).
        policy: settings overriding those stored in the checkpoint (``path``, ``config``, ``lora``, ``dtype``,
            ...), e.g. a base model that has moved; required for a checkpoint of a module built in Python.
        tokenizer: the tokenizer to write alongside; default the run's (``data.tokenizer``) or the policy's path.
        merge: fold a LoRA adapter into the base and write a plain model.
        dtype: the written weights' dtype (default: as trained).
        overwrite: replace the content of a non-empty ``output_dir`` (refused otherwise).
    """
    if (refusal := target_refusal(output_dir, overwrite, "--overwrite true")) is not None:
        raise ConfigError("output_dir", output_dir, refusal)
    checkpoint = read_checkpoint(ckpt_path)
    spec = policy_spec(checkpoint, policy)
    if merge and spec.lora is None:
        raise ValueError("--merge folds a LoRA adapter into its base: this policy has no adapter (policy.lora)")
    model = load_policy_weights(ckpt_path, checkpoint, empty_policy(spec))
    named = tokenizer or run_tokenizer(checkpoint, spec)
    loaded = AutoTokenizer.from_pretrained(named) if named is not None else None  # read before anything is written
    try:
        manifest = (checkpoint.get(IDENTITY) or {}).get("manifest")
        return write_pretrained(model, output_dir, loaded, merge, dtype, manifest=manifest)
    except (OSError, SafetensorError) as error:  # a full disk, no permission: one line, not a traceback
        raise ValueError(f"could not write the export to {output_dir}, left as it was: {error}") from error


def run_tokenizer(checkpoint: dict[str, Any], spec: PolicySpec) -> str | None:
    """The tokenizer the run trained with (its data module's), or else the policy's path if it holds one."""
    data = _as_dict(checkpoint.get("datamodule_hyper_parameters"))
    named = data.get("tokenizer") or _as_dict(data.get("init_args")).get("tokenizer")
    if isinstance(named, str):
        return named
    if spec.path is not None and (Path(spec.path) / "tokenizer_config.json").is_file():
        return spec.path
    return None


def _check_covered(model: nn.Module, target: dict[str, Tensor], loaded: dict[str, Any]) -> None:
    """Every parameter (a tied one once) and persistent buffer of ``model`` came from the checkpoint."""
    covered = {target[name].data_ptr() for name in loaded if name in target}
    missing = [name for name, value in model.state_dict().items() if value.data_ptr() not in covered]
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} of the policy's weights, e.g. {missing[:3]}: "
                         "check the policy settings (path/config, lora) match the run's")


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    return dict(vars(value))
