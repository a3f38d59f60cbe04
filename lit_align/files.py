"""Files lit-align writes: complete or absent, and readable as the user's umask says.

Each file is written under a hidden temporary name beside its target and renamed over it, so a reader (or a run
killed mid-write) sees the old file or the new one, never a torn one. ``safetensors`` creates its files 0600 and
``tempfile`` does too; a file written here is given ``0666 & ~umask`` instead (0644 under the usual 022), as any
file a user's own tools create.
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor


def umask_mode() -> int:
    """The mode a new regular file gets from the process's umask (``0666 & ~umask``)."""
    mask = os.umask(0o22)
    os.umask(mask)
    return 0o666 & ~mask


def partial_path(path: Path) -> Path:
    """The hidden temporary sibling ``path`` is written under before it is renamed into place."""
    return path.with_name(f".{path.name}.partial")


def save_safetensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` whole or not at all (beside, then renamed), with the umask's mode."""
    path = Path(path)
    partial = partial_path(path)
    save_file(tensors, str(partial), metadata=metadata)
    os.chmod(partial, umask_mode())
    partial.replace(path)
    return path

