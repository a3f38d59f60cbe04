"""One writer per store: ``lit-align precompute`` holds ``{store}/.writer.lock`` from its start to its merge.

The lock file names its holder (host, process id, the process's start time, when it took the lock). It is made
whole under a temporary name and hard-linked into place, which fails when a lock is there already, so two
precomputes started together cannot both take it. A second precompute into the same store is refused in one line
naming the holder. A lock whose holder is gone (a precompute killed with ``kill -9``, or by the machine going
down) is detected on the same host, where the holder's process can be looked up, taken over and reported; a lock
held from another host cannot be checked from here, and the refusal says which file to remove once that
precompute is known to be gone.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lit_align.errors import ConfigError
from lit_align.files import umask_mode

log = logging.getLogger(__name__)
LOCK_FILE = ".writer.lock"
UNKNOWN = -1


class StoreWriterLock(Callback):
    """Takes ``{store}/.writer.lock`` on the first process at setup (every process refuses together when it is
    held); :meth:`release` gives it back after the merge, and a failed run gives it back on its way out.

    Args:
        store_path: the store's directory.
        key: the config key the store's path was given under, for the one-line refusal.
    """

    def __init__(self, store_path: str | Path, key: str = "model.reference.path") -> None:
        self.lock = Path(store_path) / LOCK_FILE
        self.key = key
        self.held = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        refusal = None
        if trainer.is_global_zero:
            try:
                self.acquire()
            except ConfigError as error:
                refusal = error.expected
        refusal = trainer.strategy.broadcast(refusal)
        if refusal is not None:
            raise ConfigError(self.key, str(self.lock.parent), refusal)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or take over one whose holder is gone; :class:`ConfigError` while it is held."""
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if _link_new_lock(self.lock):
                self.held = True
                return
            holder = _holder(self.lock)
            if holder is None or _running(holder):
                raise ConfigError(self.key, str(self.lock.parent), _busy(self.lock, holder))
            log.warning("taking over %s: its holder (%s) is no longer running", self.lock, _describe(holder))
            _remove_if_unchanged(self.lock, holder)
        raise ConfigError(self.key, str(self.lock.parent), _busy(self.lock, _holder(self.lock)))

    def release(self) -> None:
        if self.held:
            self.lock.unlink(missing_ok=True)
            self.held = False


def _this_process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _link_new_lock(lock: Path) -> bool:
    """Write this process's lock whole beside ``lock`` and link it into place; ``False`` if one is there."""
    partial = lock.with_name(f"{lock.name}.{uuid.uuid4().hex}.partial")
    partial.write_text(json.dumps(_this_process()))
    os.chmod(partial, umask_mode())
    try:
        os.link(partial, lock)
        return True
    except FileExistsError:
        return False
    finally:
        partial.unlink()


def _holder(lock: Path) -> dict[str, Any] | None:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return None


def _running(holder: dict[str, Any]) -> bool:
    """Whether the holder may still run: always for another host (it cannot be looked up from here)."""
    if holder.get("host") != socket.gethostname():
        return True
    start, recorded = _process_start(holder["pid"]), holder.get("process_start")
    return start is not None and (start == recorded or UNKNOWN in (start, recorded))


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``), so that a later process reusing a
    dead holder's id is not taken for it; ``None`` when no such process runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return UNKNOWN  # running, start unknown (no /proc): taken as the holder


def _remove_if_unchanged(lock: Path, holder: dict[str, Any]) -> None:
    """Remove the stale ``lock`` unless another process took it over meanwhile."""
    if _holder(lock) == holder:
        lock.unlink(missing_ok=True)


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "its lock file cannot be read"
    return f"process {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"


def _busy(lock: Path, holder: dict[str, Any] | None) -> str:
    return (f"another lit-align precompute is writing this store ({_describe(holder)}); wait for it to finish, "
            f"or precompute into another path (if that process is gone, remove {lock})")
