"""Malformed JSON in a data file: found, named by file and line, and (when asked) skipped and counted.

``datasets``' JSON reader fails on the first line that does not parse with a message that names neither the file
nor the line; when it fails, the file is read again here line by line to say where, or to keep the good rows.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any


class BadLine(ValueError):
    """A line of a JSON Lines file (or a JSON document) that does not parse to an object."""


def open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def blank_file(path: Path) -> bool:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        return not any(chunk.strip() for chunk in iter(lambda: handle.read(1 << 20), b""))


def json_rows_skipping_bad_lines(path: Path, skip_bad_lines: bool) -> tuple[list[dict[str, Any]], int]:
    """The rows of a JSON Lines file and the number of lines skipped; a bad line raises :class:`BadLine` naming
    the file and the line unless ``skip_bad_lines``. A JSON document (one array of rows) that does not parse
    raises with its line whatever ``skip_bad_lines`` says: nothing of it can be kept."""
    with open_text(path) as handle:
        text = handle.read()
    if Path(path.name.removesuffix(".gz")).suffix == ".json" and text.lstrip().startswith("["):
        try:
            return json.loads(text), 0
        except json.JSONDecodeError as error:
            raise BadLine(f"{path}: line {error.lineno} is not valid JSON ({error.msg})") from error
    rows, bad = [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise json.JSONDecodeError(f"a {type(row).__name__}, not an object", line, 0)
        except json.JSONDecodeError as error:
            if not skip_bad_lines:
                raise BadLine(
                    f"{path}: line {number} is not valid JSON ({error.msg}); fix it, or set skip_bad_lines: true "
                    "to skip such lines (counted as bad_json)"
                ) from error
            bad += 1
            continue
        rows.append(row)
    return rows, bad
