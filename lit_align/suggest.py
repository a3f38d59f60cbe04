""""Did you mean": the nearest known name for a misspelt config key or class path.

A misspelt key (``--model.objectiv.beta``) is matched, at its first unknown dotted part, against the parser's own
keys; a misspelt class path (``lit_align.objectives.DPOO``) against the classes lit-align registers for that
setting (the ``__all__`` of its objectives, references and data packages). Nothing a user named is imported: only
lit-align's own packages are read.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Iterable

REGISTRIES = {"model.objective": "lit_align.objectives", "model.reference": "lit_align.reference",
              "model.reference.source": "lit_align.reference", "data": "lit_align.data",
              "data.source": "lit_align.data"}
"""The package whose public classes a class-path setting takes."""
_UNKNOWN_KEYS = re.compile(r"unrecognized arguments: (.*)$")
_NOT_ACCEPTED = re.compile(r"^([\w.]+): Option '(\w+)' is not accepted")
_BAD_CLASS = re.compile(r"^([\w.]+): Expected a path but ([\w.]+) either not accessible or invalid")


def suggest_key(given: str, keys: Iterable[str]) -> str | None:
    """The known key nearest to ``given`` (a dotted key), corrected at its first part that no known key has."""
    keys = list(keys)
    parts = given.split(".")
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if any(key == prefix or key.startswith(f"{prefix}.") for key in keys):
            continue
        known = {".".join(key.split(".")[:depth]) for key in keys if key.count(".") >= depth - 1}
        match = difflib.get_close_matches(prefix, known, n=1, cutoff=0.75)
        return ".".join([match[0], *parts[depth:]]) if match else None
    return None


def suggest_class(key: str, given: str) -> str | None:
    """The class lit-align registers for setting ``key`` nearest to the class path ``given``."""
    package = REGISTRIES.get(key)
    if package is None:
        return None
    names = getattr(importlib.import_module(package), "__all__", [])
    match = difflib.get_close_matches(given.rsplit(".", 1)[-1], names, n=1, cutoff=0.6)
    return f"{package}.{match[0]}" if match else None


def _argument_keys(key: str) -> list[str]:
    """``key.<argument>`` for every ``__init__`` argument of the classes lit-align registers for ``key``."""
    package = importlib.import_module(REGISTRIES[key]) if key in REGISTRIES else None
    classes = [getattr(package, name) for name in getattr(package, "__all__", [])]
    return [f"{key}.{name}" for cls in classes if inspect.isclass(cls)
            for name in inspect.signature(cls.__init__).parameters if name not in ("self", "args", "kwargs")]


def with_suggestions(message: str, keys: Iterable[str]) -> str:
    """``message`` (a parse error's line) with "did you mean ..." for each misspelt key or class path in it."""
    if match := _UNKNOWN_KEYS.search(message):
        hints = []
        for argument in match[1].split():
            key = argument.removeprefix("--").split("=", 1)[0]
            if (near := suggest_key(key, keys)) is not None:
                hints.append(f"--{near}")
        return f"{message}; did you mean {', '.join(hints)}?" if hints else message
    if (match := _NOT_ACCEPTED.match(message)) and \
            (near := suggest_key(f"{match[1]}.{match[2]}", [*keys, *_argument_keys(match[1])])) is not None:
        return f"{message}; did you mean --{near}?"
    if (match := _BAD_CLASS.match(message)) and (near := suggest_class(match[1], match[2])) is not None:
        return f"{message}; did you mean {near}?"
    return message
