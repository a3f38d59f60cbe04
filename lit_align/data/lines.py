"""Bad lines in a data file: found, named by file and line, and (when asked) skipped and counted.

``datasets``' JSON reader fails on the first line that does not parse with a message that names neither the file
nor the line, and keeps invalid UTF-8 until a row is read; when either happens, the file is read again here line
by line to say where, or to keep the good rows.

A line is what ends in ``b"\\n"``, as JSON Lines defines it, and nothing else: ``str.splitlines`` would also split
on U+2028, U+0085 and the like, which JSON allows raw inside strings. Each line is decoded on its own, so one line
of invalid UTF-8 is one bad line (``bad_utf8``), as one line of malformed JSON is (``bad_json``); the rows kept
plus the lines skipped are the non-blank lines of the file.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

BAD_JSON, BAD_UTF8 = "bad_json", "bad_utf8"


class BadLine(ValueError):
    """A line of a JSON Lines file (or a JSON document) that does not decode or parse to an object."""

    def __init__(self, path: Path, number: int, problem: str, reason: str | None = None) -> None:
        message = f"{path}: line {number} is {problem}"
        if reason is not None:
            message += f"; fix it, or set skip_bad_lines: true to skip such lines (counted as {reason})"
        super().__init__(message)
        self.reason = reason


def open_binary(path: Path):
    """The file's bytes, decompressed when it ends in ``.gz``."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def blank_file(path: Path) -> bool:
    with open_binary(path) as handle:
        return not any(chunk.strip() for chunk in iter(lambda: handle.read(1 << 20), b""))


def json_rows_skipping_bad_lines(path: Path, skip_bad_lines: bool) -> tuple[list[dict[str, Any]], Counter]:
    """The rows of a JSON Lines file and the lines skipped, counted by reason (``bad_json``, ``bad_utf8``); a bad
    line raises :class:`BadLine` naming the file and the line unless ``skip_bad_lines``. A JSON document (one
    array of rows) that does not decode or parse raises with its line whatever ``skip_bad_lines`` says: nothing
    of it can be kept."""
    with open_binary(path) as handle:
        if Path(path.name.removesuffix(".gz")).suffix == ".json" and _starts_an_array(handle):
            return _json_document(path, handle.read()), Counter()
        rows, skipped = [], Counter()
        for number, line in enumerate(handle, start=1):  # a binary file's lines end in b"\n" only
            try:
                row = parse_line(path, number, line)
            except BadLine as bad:
                if not skip_bad_lines:
                    raise
                skipped[bad.reason] += 1
                continue
            if row is not None:
                rows.append(row)
    return rows, skipped


def parse_line(path: Path, number: int, line: bytes) -> dict[str, Any] | None:
    """One line's row (``None`` for a blank line), or :class:`BadLine` saying why it is not one."""
    try:
        text = line.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        raise BadLine(path, number, f"not valid UTF-8 ({error.reason} at byte {error.start + 1})", BAD_UTF8) from error
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadLine(path, number, f"not valid JSON ({error.msg})", BAD_JSON) from error
    if not isinstance(row, dict):
        raise BadLine(path, number, f"not valid JSON (a {type(row).__name__}, not an object)", BAD_JSON)
    return row


def _starts_an_array(handle) -> bool:
    """Whether the file's first non-blank byte opens a JSON array; the handle is left at the start."""
    start = handle.read(1 << 16)
    handle.seek(0)
    return start.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[")


def _json_document(path: Path, data: bytes) -> list[dict[str, Any]]:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        number = data.count(b"\n", 0, error.start) + 1
        raise BadLine(path, number, f"not valid UTF-8 ({error.reason})") from error
    except json.JSONDecodeError as error:
        raise BadLine(path, error.lineno, f"not valid JSON ({error.msg})") from error
