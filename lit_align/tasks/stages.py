"""Cached pipeline stages: each stage builds one directory, stamped with a fingerprint of its settings.

A stage's fingerprint hashes its name, its settings and the fingerprints of the stages it reads, so a change
anywhere upstream rebuilds everything downstream and nothing else. A stage builds into a temporary directory
which is renamed into place only when complete, with ``stage.json`` (fingerprint, settings, seconds taken and
whatever summary the stage returned) inside; an interrupted build is never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

MARKER = "stage.json"


@dataclass(frozen=True)
class StageResult:
    """A finished stage: where its output lies, its fingerprint, and whether this call built it."""

    name: str
    path: Path
    fingerprint: str
    ran: bool
    summary: dict[str, Any]
    """The marker's contents: settings, seconds taken to build, and the stage's own summary."""


def fingerprint(name: str, settings: dict[str, Any], upstream: Sequence[str]) -> str:
    """A short hash of a stage's name, settings (JSON-serialisable) and upstream fingerprints."""
    payload = json.dumps({"name": name, "settings": settings, "upstream": list(upstream)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of a finished stage directory, or ``None``."""
    marker = path / MARKER
    return json.loads(marker.read_text()) if marker.is_file() else None


def run_stage(
    root: str | Path,
    name: str,
    settings: dict[str, Any],
    build: Callable[[Path], dict[str, Any] | None],
    upstream: Sequence[StageResult] = (),
) -> StageResult:
    """Run ``build(directory)`` for stage ``name`` under ``root`` unless an up-to-date result is there.

    Args:
        root: the work directory; the stage's output is ``root / name``.
        settings: everything ``build`` depends on besides its upstream stages (JSON-serialisable).
        build: writes the stage's files into the directory it is given; may return a JSON-serialisable
            summary, stored in the marker.
        upstream: the stages whose outputs ``build`` reads.
    """
    root = Path(root)
    path = root / name
    stamp = fingerprint(name, settings, [stage.fingerprint for stage in upstream])
    marker = read_marker(path)
    if marker is not None and marker["fingerprint"] == stamp:
        rank_zero_info(f"stage {name}: up to date in {path}, skipped")
        return StageResult(name, path, stamp, ran=False, summary=marker)
    scratch = root / f".{name}.building"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    start = time.perf_counter()
    summary = build(scratch) or {}
    marker = {"fingerprint": stamp, "settings": settings, "seconds": time.perf_counter() - start, **summary}
    (scratch / MARKER).write_text(json.dumps(marker, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    scratch.rename(path)
    rank_zero_info(f"stage {name}: built in {marker['seconds']:.1f} s -> {path}")
    return StageResult(name, path, stamp, ran=True, summary=marker)
