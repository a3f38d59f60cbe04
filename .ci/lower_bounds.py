"""Print pyproject's runtime dependencies pinned at their lower bounds (``name==bound``), one per line, for
.ci/run's second environment. torch is pinned to the one CPU build CI has (its bound is not verified here).
A dependency without a ``>=`` lower bound is an error."""

import re
import sys
from pathlib import Path

import tomllib

TORCH = "torch==2.13.0"
BOUND = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*(?:\[[^\]]*\])?)\s*>=\s*([^,;\s]+)\s*$")


def pins(pyproject: Path) -> list[str]:
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pinned = []
    for dependency in dependencies:
        match = BOUND.match(dependency)
        if match is None:
            sys.exit(f"{pyproject}: dependency {dependency!r} has no single lower bound (name>=version)")
        name, version = match.groups()
        pinned.append(TORCH if name == "torch" else f"{name}=={version}")
    return pinned


if __name__ == "__main__":
    print("\n".join(pins(Path(__file__).resolve().parent.parent / "pyproject.toml")))
