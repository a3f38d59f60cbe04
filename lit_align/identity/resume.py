"""Resume compares before it restores: the checkpoint to resume from is this run's, intact, and any change to
what a step computes is refused unless allowed by name.

:func:`checkpoint_to_resume` turns a trainer's ``ckpt_path`` into the checkpoint to restore:

- ``"last"`` is this run's last: among the checkpoints under ``default_root_dir`` whose manifest matches this
  run's (allowed changes aside), the one of the highest step; runs that share a root never resume each other;
  several at that step: refused, listed; none: one line saying where it looked, then a fresh start;
- a path is read and compared: each change to a setting that alters a step is one line, ``resume changes
  <key>: <old> -> <new>``, and the resume is refused unless ``allow`` names the key (or a key above it); changes
  that cannot alter a step (:data:`~lit_align.identity.manifest.FREE`) and allowed ones are logged;
- either way the weights are checked against their checksum; a damaged checkpoint is refused, naming the newest
  intact checkpoint of the same run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lit_align.identity.checkpoints import (
    CheckpointIdentity,
    DamagedCheckpoint,
    checkpoints_under,
    read_identity,
    verify,
)
from lit_align.identity.manifest import Change, Manifest, changes, is_allowed, is_free

log = logging.getLogger(__name__)


class ResumeRefused(ValueError):
    """The checkpoint belongs to another run, or resuming it would change what a step computes."""


def checkpoint_to_resume(ckpt_path: str | Path | None, manifest: Manifest, root: str | Path,
                         allow: list[str]) -> str | None:
    """The checkpoint to restore for ``ckpt_path`` (``None``: start fresh), checked against ``manifest``."""
    if ckpt_path is None or str(ckpt_path) in ("best", "hpc", "registry") or "://" in str(ckpt_path):
        return None if ckpt_path is None else str(ckpt_path)
    if str(ckpt_path) == "last":
        chosen = this_runs_last(manifest, root, allow)
        if chosen is None:
            return None
        ckpt_path = chosen
    try:
        identity = verify(ckpt_path)
    except DamagedCheckpoint as damaged:
        raise DamagedCheckpoint(f"{damaged}; {_intact_alternative(Path(ckpt_path), manifest, root, allow)}") \
            from damaged
    check_resume(identity, manifest, allow)
    return str(ckpt_path)


def check_resume(identity: CheckpointIdentity, manifest: Manifest, allow: list[str]) -> None:
    """Refuse resuming ``identity`` into a run of ``manifest`` when a setting that alters a step changed (one
    line each, unless allowed); log the changes that pass."""
    if identity.manifest is None:
        log.warning("resuming %s, written before checkpoints carried their run's settings: nothing is compared",
                    identity.path)
        return
    found = changes(identity.manifest, manifest)
    refused = [change for change in found if not is_free(change.key) and not is_allowed(change.key, allow)]
    if refused:
        keys = ", ".join(change.key for change in refused)
        raise ResumeRefused("\n".join([*(f"resume changes {change}" for change in refused),
                                       f"to continue from {identity.path} anyway, allow it with "
                                       f"--trainer.resume_allows=[{keys}]"]))
    for change in found:
        log.warning("resume: %s (%s)", change, "allowed" if is_allowed(change.key, allow) else "does not alter a step")


def this_runs_last(manifest: Manifest, root: str | Path, allow: list[str]) -> Path | None:
    """The newest-step checkpoint under ``root`` of this run (matching ``manifest``); ``None`` when there is none."""
    mine, others, damaged = _candidates(manifest, root, allow)
    if not mine:
        log.warning("--ckpt_path=last: no checkpoint of this run under %s (%d of other runs or settings, %d "
                    "unreadable%s); starting fresh", Path(root).resolve(), len(others), len(damaged),
                    _nearest(others, manifest, allow))
        return None
    top = max(identity.step for identity in mine)
    best = [identity for identity in mine if identity.step == top]
    if len({identity.path.resolve() for identity in best}) > 1 and not _all_last(best):
        listed = ", ".join(str(identity.path) for identity in best)
        raise ResumeRefused(f"--ckpt_path=last: several checkpoints of this run at step {top}: {listed}; "
                            "give one as --ckpt_path")
    return _prefer_last(best).path


def _candidates(manifest: Manifest, root: str | Path, allow: list[str]
                ) -> tuple[list[CheckpointIdentity], list[CheckpointIdentity], list[Path]]:
    """The checkpoints under ``root``: this run's, other runs', and unreadable ones."""
    mine, others, damaged = [], [], []
    for path in checkpoints_under(root):
        try:
            identity, _ = read_identity(path)
        except DamagedCheckpoint:
            damaged.append(path)
            continue
        (mine if _same_run(identity, manifest, allow) else others).append(identity)
    return mine, others, damaged


def _nearest(others: list[CheckpointIdentity], manifest: Manifest, allow: list[str]) -> str:
    """The newest other checkpoint and the settings it differs in, for a user who edited the config."""
    described = [identity for identity in others if identity.manifest is not None]
    if not described:
        return ""
    newest = _prefer_last([found for found in described if found.step == max(f.step for f in described)])
    differ = [change.key for change in changes(newest.manifest, manifest)
              if not is_free(change.key) and not is_allowed(change.key, allow)]
    return f"; the newest, {newest.path} (step {newest.step}), differs in {', '.join(differ)}"


def _same_run(identity: CheckpointIdentity, manifest: Manifest, allow: list[str]) -> bool:
    found: list[Change] = changes(identity.manifest, manifest) if identity.manifest is not None else [Change("", 0, 1)]
    return all(is_free(change.key) or is_allowed(change.key, allow) for change in found)


def _intact_alternative(damaged: Path, manifest: Manifest, root: str | Path, allow: list[str]) -> str:
    """Where to resume instead: the newest-step intact checkpoint of this run under ``root``."""
    mine, _, _ = _candidates(manifest, root, allow)
    for identity in sorted(mine, key=lambda found: found.step, reverse=True):
        if identity.path.resolve() == damaged.resolve():
            continue
        try:
            verify(identity.path)
        except DamagedCheckpoint:
            continue
        return (f"the newest intact checkpoint of this run is {identity.path} (step {identity.step}): "
                f"--ckpt_path={identity.path}")
    return f"no intact checkpoint of this run is under {Path(root).resolve()}"


def _all_last(found: list[CheckpointIdentity]) -> bool:
    """Whether ``found`` is one save under two names (``last.ckpt`` beside the step's own checkpoint)."""
    return len({identity.path.parent for identity in found}) == 1 and any(identity.path.name.startswith("last")
                                                                            for identity in found)


def _prefer_last(found: list[CheckpointIdentity]) -> CheckpointIdentity:
    return next((identity for identity in found if identity.path.name.startswith("last")), found[0])
