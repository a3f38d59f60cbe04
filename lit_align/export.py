"""``lit-align export``: a trained policy out of a Lightning checkpoint, as a ``save_pretrained`` directory.

A checkpoint holds the policy's weights under ``policy.`` (a single file, or a directory of shards written by
FSDP1 or FSDP2 with ``torch.distributed.checkpoint``) and, when the run came from the CLI, the policy's settings
(``hyper_parameters.policy``). Export builds an empty model of the right shape from those settings (the
transformers config only, no weights read), copies the trained weights into it — a single file memory-mapped, a
sharded directory read shard by shard by one process, so no training process ever holds the full model — and
writes what an inference stack reads: safetensors weights, ``config.json``, ``generation_config.json`` and the
tokenizer. An adapter run writes its adapter alone (peft's format), or with ``merge`` the adapter folded into the
base. A QLoRA run's checkpoint holds its base in 4-bit: export reads only the adapter from it and the base again,
unquantised, from its files, so ``merge`` writes a full-precision model.

The output directory ends holding exactly one model: a non-empty one is refused unless ``overwrite``, and the new
content is written beside it and swapped in whole (:mod:`lit_align.atomic_dir`), so a full disk or a kill leaves
the old content or nothing, never a mix, and the files take the modes of the user's umask.
"""

from __future__ import annotations

import dataclasses
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
from lit_align.models.adapters import base_changing_init, peft_config_from_dict
from lit_align.models.loading import load_base, with_generation_config
from lit_align.models.policy import DType, LoraSettings, PolicySpec, Quantization, add_adapter

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
    if isinstance(settings.get("peft"), dict):
        settings["peft"] = peft_config_from_dict(settings["peft"])
    if isinstance(settings.get("quantization"), dict):
        settings["quantization"] = Quantization(**settings["quantization"])
    return PolicySpec(**settings)


def empty_policy(spec: PolicySpec) -> nn.Module:
    """The policy of ``spec`` (adapter included) with uninitialised weights: the config is read, no weights are. A
    quantised base is read unquantised from its files instead (a checkpoint holds it in 4 or 8 bits)."""
    if spec.quantization is not None:
        return add_adapter(load_base(dataclasses.replace(spec, quantization=None)), spec)
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


def load_policy_weights(path: str | Path, checkpoint: dict[str, Any], model: nn.Module,
                        adapter_only: bool = False) -> nn.Module:
    """Copy the policy's weights (with ``adapter_only``, its adapter's) from the checkpoint at ``path``
    (``checkpoint`` as :func:`read_checkpoint` read it) into ``model``, checking that every one is covered."""
    target = {f"policy.{name}": value for name, value in exported_state(model, adapter_only).items()}
    if Path(path).is_dir():
        stored = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        prefix = next((key for key in SHARDED_KEYS if any(name.startswith(f"{key}.policy.") for name in stored)),
                      None)
        if prefix is None:
            raise ValueError(f"{path} holds no policy weights (no '<state_dict|model>.policy.*' entries)")
        present = {name: value for name, value in target.items() if f"{prefix}.{name}" in stored}
        dcp.load({prefix: present}, checkpoint_id=str(path), no_dist=True)  # in place, shard by shard
        _check_covered(target, present)
    else:
        copy_policy_state(model, checkpoint["state_dict"], adapter_only)
    return model


def copy_policy_state(model: nn.Module, state: dict[str, Tensor], adapter_only: bool = False) -> None:
    """Copy the ``policy.*`` entries of a module's ``state`` into ``model`` (with ``adapter_only``, the adapter's
    alone), refusing one that lacks any of them."""
    target = {f"policy.{name}": value for name, value in exported_state(model, adapter_only).items()}
    loaded = {name: value for name, value in state.items() if name in target}
    with torch.no_grad():
        for name, value in loaded.items():
            target[name].copy_(value)
    _check_covered(target, loaded)


def exported_state(model: nn.Module, adapter_only: bool = False) -> dict[str, Tensor]:
    """The entries of ``model``'s state dict an export takes from the checkpoint: all of them, or with
    ``adapter_only`` (a quantised run, whose base :func:`empty_policy` reads from its files) the adapter's: its
    trainable weights."""
    state = model.state_dict()
    if not adapter_only:
        return state
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    return {name: value for name, value in state.items() if name in trainable}


def write_pretrained(model: nn.Module, output_dir: str | Path, tokenizer: str | PreTrainedTokenizerBase | None,
                     merge: bool = False, dtype: DType | None = None, keep: Callable[[Path], bool] | None = None,
                     manifest: dict[str, Any] | None = None) -> Path:
    """``save_pretrained`` ``model`` (safetensors), in ``dtype`` if given, with ``tokenizer`` (a path, or a
    tokenizer) as the whole new content of ``output_dir``: written beside it and swapped in, so nothing of an
    earlier model stays (but the entries ``keep`` selects) and a failure leaves the old content. A peft model is
    written as its adapter alone, or folded into its base with ``merge``. The manifest of the run that trained it
    goes beside, as ``lit_align_run.json``. Whether ``output_dir`` may be replaced is the caller's to check first
    (:func:`~lit_align.atomic_dir.target_refusal`)."""
    if isinstance(model, PeftModel):
        if merge:
            model = model.merge_and_unload()
        elif (init := base_changing_init(model.peft_config["default"])) is not None:
            raise ValueError(f"an adapter initialised with init_lora_weights={init!r} is relative to the base it "
                             "changed, not the one its config names: export it with merge (--merge true)")
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
    if merge and not spec.adapted:
        raise ValueError("--merge folds an adapter into its base: this policy has no adapter (policy.lora or "
                         "policy.peft)")
    model = load_policy_weights(ckpt_path, checkpoint, empty_policy(spec), adapter_only=spec.quantization is not None)
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


def _check_covered(target: dict[str, Tensor], loaded: dict[str, Any]) -> None:
    """Every entry of ``target`` (a tied weight once) came from the checkpoint."""
    covered = {target[name].data_ptr() for name in loaded if name in target}
    missing = [name.removeprefix("policy.") for name, value in target.items() if value.data_ptr() not in covered]
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} of the policy's weights, e.g. {missing[:3]}: "
                         "check the policy settings (path/config, lora) match the run's")


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    return dict(vars(value))
