"""What a checkpoint says about itself: its run's manifest, its step and a checksum of its weights.

Every checkpoint lit-align writes carries, under :data:`IDENTITY`, the manifest of the run that wrote it
(:mod:`lit_align.identity.manifest`) and a CRC-32 of its ``state_dict`` tensors, byte for byte (``None`` for a
sharded checkpoint, whose shards ``torch.distributed.checkpoint`` writes and reads itself). Reading it back,
:func:`read_identity` loads a single-file checkpoint memory-mapped (a sharded one: its ``meta.pt``), and
:func:`verify` recomputes the checksum, so a truncated, corrupted or bit-flipped file is found before anything is
restored from it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_align.identity.manifest import Manifest

IDENTITY = "lit_align_identity"
SHARDED_METADATA = "meta.pt"


class DamagedCheckpoint(ValueError):
    """A checkpoint that cannot be read whole, or whose weights do not match their checksum."""


@dataclass
class CheckpointIdentity:
    path: Path
    step: int
    manifest: Manifest | None
    checksum: int | None


def state_checksum(state_dict: dict[str, Any]) -> int | None:
    """CRC-32 of the tensors of ``state_dict`` in key order (their names, shapes, dtypes and bytes); ``None`` when
    any is not a plain local tensor (a sharded ``DTensor``)."""
    crc = 0
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if type(tensor) is not Tensor and not isinstance(tensor, torch.nn.Parameter):
            return None
        crc = zlib.crc32(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode(), crc)
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        crc = zlib.crc32(memoryview(data), crc)
    return crc


def read_identity(path: str | Path, whole: bool = False) -> tuple[CheckpointIdentity, dict[str, Any]]:
    """The identity of the checkpoint at ``path`` and the checkpoint itself (memory-mapped; a sharded one's
    ``meta.pt``); :class:`DamagedCheckpoint` naming the file when it cannot be read."""
    path = Path(path)
    file = path / SHARDED_METADATA if path.is_dir() else path
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=not path.is_dir())
        identity = checkpoint.get(IDENTITY) or {}
        found = CheckpointIdentity(path, int(checkpoint.get("global_step", 0)), identity.get("manifest"),
                                   identity.get("checksum"))
    except Exception as error:  # torch's zip reader raises RuntimeError, EOFError, pickle errors
        raise DamagedCheckpoint(f"the checkpoint {file} cannot be read ({_first_line(error)})") from error
    return found, checkpoint


def verify(path: str | Path) -> CheckpointIdentity:
    """The identity of the checkpoint at ``path`` after checking its weights against their checksum."""
    identity, checkpoint = read_identity(path)
    if identity.checksum is not None:
        try:
            found = state_checksum(checkpoint.get("state_dict", {}))
        except Exception as error:  # a tensor whose storage lies past a truncated file's end
            raise DamagedCheckpoint(f"the checkpoint {path} is truncated ({_first_line(error)})") from error
        if found != identity.checksum:
            raise DamagedCheckpoint(f"the checkpoint {path} is corrupted: its weights do not match their "
                                    f"checksum (CRC-32 {found:08x}, saved {identity.checksum:08x})")
    return identity


def checkpoints_under(root: str | Path) -> list[Path]:
    """Every checkpoint (``*.ckpt`` file, or sharded directory) under ``root``, newest first."""
    found = [path for path in Path(root).rglob("*.ckpt") if path.is_file() or (path / SHARDED_METADATA).is_file()]
    return sorted(found, key=lambda path: path.stat().st_mtime, reverse=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
