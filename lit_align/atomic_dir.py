"""A directory replaced whole: its new content is written in a hidden sibling, then swapped in by one rename.

A ``save_pretrained`` directory is read as a whole: ``from_pretrained`` takes whatever it finds there, so the
``adapter_config.json`` of an earlier LoRA export gets attached to a new full model, and a write cut short (a full
disk, a kill) leaves a config without its weights. :func:`replacing_directory` writes into
``.<name>.<host>-<pid>-<id>.partial`` beside the target (same filesystem, so the rename never copies), syncs it,
and swaps it in: on Linux with ``renameat2(RENAME_EXCHANGE)``, so the target always exists, holding the old
content or the new; elsewhere (or on a filesystem without it) with two renames, so for an instant it does not
exist. Whatever fails before the swap leaves the target as it was and removes the sibling; a hard kill can leave
the hidden sibling, which the next write to the same target removes once its process is gone.

:func:`target_refusal` is the rule every writer checks first: a file is not a directory to write into, and a
non-empty directory is replaced only when the user said so.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import glob
import logging
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

_SUFFIX = ".partial"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def target_refusal(target: str | Path, overwrite: bool, flag: str = "overwrite") -> str | None:
    """Why ``target`` may not be written (a file; a non-empty directory without ``overwrite``, the setting a
    user names ``flag``), or ``None``."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        return "a file, not a directory: give the path of a directory to write into"
    if not overwrite and target.is_dir() and (names := sorted(path.name for path in target.iterdir())):
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        return f"not empty (holds {shown}): give an empty or new directory, or pass {flag} to replace its content"
    return None


@contextmanager
def replacing_directory(target: str | Path, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield an empty hidden sibling of ``target`` to write into; when the block ends without error, swap it in
    place of ``target`` (the old content is removed), with the modes the umask gives. On error (or interrupt) the
    sibling is removed and ``target`` is left as it was.

    Args:
        target: the directory to replace (created with its parents if missing; a symlink is followed).
        keep: entries of the old ``target`` to carry into the new one (``SaveHFModel``'s ``step-<n>`` saves).
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    staging = _sibling(target)
    staging.mkdir()  # 0o777 less the umask: the modes every written file will take
    try:
        yield staging
        _follow_umask(staging)
        _sync_tree(staging)
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    sync_directory(target.parent)
    _carry_over(staging, target, keep)
    shutil.rmtree(staging, ignore_errors=True)  # the old content, now at the sibling's name


def put_in_place(staging: str | Path, target: str | Path) -> None:
    """Replace ``target`` (a file or a directory, or nothing) by ``staging`` whole, and remove the old content:
    a file by one ``os.replace``, a directory by :func:`replacing_directory`'s swap."""
    staging, target = Path(staging), Path(target)
    if staging.is_dir():
        if target.exists() and not target.is_dir():
            target.unlink()
        _swap_in(staging, target)
        sync_directory(target.parent)
        shutil.rmtree(staging, ignore_errors=True)  # the old content, now at the staging name
    else:
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staging, target)
        sync_directory(target.parent)


def _sibling(target: Path) -> Path:
    return target.with_name(f".{target.name}.{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{_SUFFIX}")


def _swap_in(staging: Path, target: Path) -> None:
    """Put ``staging`` at ``target``; the old ``target``, if any, ends at ``staging``'s name."""
    if not target.exists():
        os.rename(staging, target)
    elif not _exchange(staging, target):
        aside = _sibling(target)
        os.rename(target, aside)
        try:
            os.rename(staging, target)
        except BaseException:
            os.rename(aside, target)
            raise
        os.rename(aside, staging)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where that is not available."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _carry_over(old: Path, new: Path, keep: Callable[[Path], bool] | None) -> None:
    """Move the entries of ``old`` that ``keep`` selects into ``new`` (where ``new`` has none of that name)."""
    if keep is None or not old.is_dir():
        return
    for entry in old.iterdir():
        if keep(entry) and not (new / entry.name).exists():
            os.rename(entry, new / entry.name)


def _follow_umask(root: Path) -> None:
    """Give every file under ``root`` the mode the umask gives a new file (safetensors writes its weights through
    a 0600 temporary file), every directory ``root``'s own mode (made by ``mkdir``, so 0o777 less the umask)."""
    directory_mode = root.stat().st_mode & 0o777
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(directory_mode if path.is_dir() else directory_mode & 0o666)


def _sync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` to disk, so the rename never publishes unwritten data."""
    for path in [*root.rglob("*"), root]:
        if path.is_dir():
            sync_directory(path)
        elif path.is_file() and not path.is_symlink():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def sync_directory(directory: Path) -> None:
    """Make the entries of ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_leftovers(target: Path) -> None:
    """Remove the hidden siblings that writes to ``target`` killed on this host left (their process is gone)."""
    prefix, host = f".{target.name}.", socket.gethostname()
    for path in target.parent.glob(f"{glob.escape(prefix)}*{_SUFFIX}"):
        writer, _, pid = path.name[len(prefix):-len(_SUFFIX)].rpartition("-")[0].rpartition("-")
        if writer == host and pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by an interrupted write to %s", path, target)
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

