"""A guard that fails any test reading beside the repository: ``open`` of a path in the folder that holds the
checkout but outside the checkout itself (a data folder or a sibling project beside it) raises
:class:`OutsideRepositoryError` naming the path, as a user's clone has nothing beside it.

Hidden folders beside the checkout (``~/.cache`` when it is cloned into a home folder) stay readable: caches are
the libraries', not the suite's. The hook is Python's audit hook on ``open``, so it sees every file this process
opens through Python, the libraries' included."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class OutsideRepositoryError(PermissionError):
    """The suite opened a file beside the repository, which a user's clone does not have."""


def outside_repository(path: str | bytes | int) -> Path | None:
    """``path`` resolved, when it lies beside the repository (in its parent folder, outside it, not hidden)."""
    if isinstance(path, int):
        return None
    resolved = Path(os.path.abspath(os.fsdecode(path)))
    try:
        first = resolved.relative_to(REPO.parent).parts[0]
    except (ValueError, IndexError):
        return None
    return None if first == REPO.name or first.startswith(".") else resolved


def _refuse_outside_reads(event: str, args: tuple) -> None:
    if event == "open" and args and (outside := outside_repository(args[0])) is not None:
        raise OutsideRepositoryError(f"the test suite read {outside}, outside the repository {REPO}: a clone has "
                                     "nothing beside it; ship what the tests read inside the repository")


def install() -> None:
    """Refuse reads beside the repository for the rest of this process (an audit hook cannot be removed)."""
    sys.addaudithook(_refuse_outside_reads)
