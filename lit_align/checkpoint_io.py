"""``SafeCheckpointIO``: checkpoints written atomically and read weights-only.

Lightning's ``TorchCheckpointIO`` serialises into memory and writes through a temporary file in the system's temp
directory, then moves it onto the target; when that directory is on another filesystem (a local ``/tmp`` and a
network checkpoint directory), the move is a copy that a crash can cut short, leaving a half-written ``last.ckpt``.
Here the temporary file lies next to the target, is flushed to disk, and ``os.replace`` puts it in place: the
target is always either the previous complete checkpoint or the new complete one.

Reading, ``weights_only`` defaults to ``True`` (torch's restricted unpickler: tensors and plain containers, no
code), whatever torch's own default or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` say; only an explicit
``weights_only=False`` (``--weights_only false`` on the command line) reads a checkpoint with full pickle.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_align.atomic_dir import sync_directory


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, saving atomically (same-directory temporary file, fsync,
    ``os.replace``) and loading weights-only unless told otherwise. Remote (fsspec) paths are saved by Lightning's
    own code. :class:`~lit_align.trainer.AlignmentTrainer` uses it unless another ``CheckpointIO`` is given."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")  # the umask's permissions
        try:
            with open(temporary, "xb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        sync_directory(target.parent)

    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Callable | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location, weights_only=True if weights_only is None else weights_only)

