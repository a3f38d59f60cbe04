"""One resolver for every path a user gives (policy, reference, tokenizer, data, checkpoint, SAE, store).

An existing local path is used as is, made absolute (so what a run records, e.g. an adapter's base model, still
points at it from another directory). Anything else must look like a hub id (``name`` or ``namespace/name``); a
string that is neither — ``nope.jsonl``, ``./modle``, ``runs/typo/sft`` whose ``runs/`` exists — is refused at
once, without a round of network retries. With ``HF_HUB_OFFLINE=1``, a hub id must be in the local hub cache.
"""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import constants

from lit_align.errors import ConfigError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_FILE_SUFFIXES = {".json", ".jsonl", ".gz", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".safetensors", ".ckpt",
                  ".pt", ".bin", ".npz", ".yaml", ".yml"}


def local_path(key: str, value: str) -> str:
    """``value`` as an absolute path if it exists; otherwise a :class:`ConfigError` for ``key``."""
    local = Path(value).expanduser()
    if not local.exists():
        raise ConfigError(key, value, f"no such file or directory (looked for {local.absolute()})")
    return str(local.resolve())


def resolve_local_or_hub(key: str, value: str, repo_type: str = "model") -> str:
    """An existing local path (made absolute), else a hub id that may exist; a :class:`ConfigError` for ``key``
    when ``value`` is neither, or when the hub is offline and its cache lacks ``value``."""
    local = Path(value).expanduser()
    if local.exists():
        return str(local.resolve())
    if not looks_like_hub_id(value):
        raise ConfigError(key, value, f"not a local path (looked for {local.absolute()}), and not a hub id "
                                      "('name' or 'namespace/name')")
    if constants.HF_HUB_OFFLINE and not _cached(value, repo_type):
        raise ConfigError(key, value, f"not a local path (looked for {local.absolute()}), and HF_HUB_OFFLINE is set "
                                      f"while the hub cache ({constants.HF_HUB_CACHE}) has no {repo_type} {value!r}")
    return value


def absolute_if_local(value: str) -> str:
    """``value`` made absolute if it names an existing local path; else unchanged (checked when it is loaded, by
    :func:`resolve_local_or_hub`: a data module may build it first, as the built-in task builds its SFT model)."""
    local = Path(value).expanduser()
    return str(local.resolve()) if local.exists() else value


def looks_like_hub_id(value: str) -> bool:
    """``name`` or ``namespace/name``, not a file name (``pairs.jsonl``) and not under an existing local folder."""
    if not _HUB_ID.fullmatch(value) or Path(value.removesuffix(".gz")).suffix.lower() in _FILE_SUFFIXES:
        return False
    return "/" not in value or not Path(value.split("/")[0]).is_dir()


def _cached(repo_id: str, repo_type: str) -> bool:
    return (Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}").is_dir()
