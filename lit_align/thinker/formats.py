"""Local reasoning files → :class:`~lit_align.thinker.encoding.ReasoningExample`.

Layouts (``row_format``; ``auto``, the default, picks one per row from its fields):

- ``gsm8k``: ``{"question": ..., "answer": "step 1\\nstep 2\\n#### 72"}`` (GSM8K, also its Socratic variant and the
  authors' GSM-style AQuA and date-understanding files): the steps are the lines before ``#### ``, the answer
  follows it (thousands separators removed).
- ``steps``: ``{"question": ..., "steps": ["step 1", "step 2"], "answer": "72"}``: the steps a list of strings (or
  one string, a step per line), the answer a string or a number (a leading ``####`` is dropped, and the thousands
  separators of a number).
- ``strategyqa``: ``{"question": ..., "answer": true, "facts": "fact 1\\nfact 2"}``: the facts (a string of lines
  or a list) are the steps and the answer is ``yes`` or ``no``.

``auto`` reads a row with a boolean ``answer`` or a ``facts`` field as ``strategyqa``, one with a ``steps`` field
as ``steps``, any other as ``gsm8k``. ``columns`` maps these field names (``question``, ``answer``, ``steps``,
``facts``) to the file's, e.g. ``{question: problem, answer: solution}``; unmapped fields keep their names.

Files are JSON lines, or one JSON array (as the authors' ``strategyqa_test.json``). A row that does not fit is
skipped and counted by reason: ``bad_json`` (a line that does not parse), ``not_an_object``,
``missing_field:<column>``, ``not_a_string:<column>``, ``empty_question``, ``no_final_answer`` (a GSM8K answer
without a ``#### `` line), ``empty_answer``, ``bad_steps:<column>`` (not a list of strings),
``not_a_boolean:<column>`` (StrategyQA).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lit_align.data.layouts import BadRow
from lit_align.thinker.encoding import ReasoningExample

ReasoningFormat = Literal["auto", "gsm8k", "steps", "strategyqa"]
FIELDS = ("question", "answer", "steps", "facts")
_GROUPED_NUMBER = re.compile(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?")


def read_rows(path: str | Path) -> tuple[list[Any], int]:
    """The rows of a JSON-lines file or a JSON array, and how many lines were not valid JSON."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return json.loads(text), 0
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not a JSON array ({error.msg}, line {error.lineno})") from None
    rows, bad = [], 0
    for line in filter(str.strip, text.splitlines()):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    return rows, bad


class Fields:
    """A row's fields under the layouts' names, read through ``columns``; a bad field is a :class:`BadRow` naming
    the file's column."""

    def __init__(self, row: dict[str, Any], columns: dict[str, str]) -> None:
        self.row, self.columns = row, columns

    def column(self, name: str) -> str:
        return self.columns.get(name, name)

    def has(self, name: str) -> bool:
        return self.row.get(self.column(name)) is not None

    def get(self, name: str) -> Any:
        if not self.has(name):
            raise BadRow(f"missing_field:{self.column(name)}")
        return self.row[self.column(name)]

    def text(self, name: str) -> str:
        value = self.get(name)
        if not isinstance(value, str):
            raise BadRow(f"not_a_string:{self.column(name)}")
        return value.strip()

    def question(self) -> str:
        question = self.text("question")
        if not question:
            raise BadRow("empty_question")
        return question

    def lines(self, name: str) -> tuple[str, ...]:
        """A list of strings, or one string of lines, as stripped non-empty steps (none when absent)."""
        value = self.row.get(self.column(name)) or []
        items = value.split("\n") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise BadRow(f"bad_steps:{self.column(name)}")
        return tuple(item.strip() for item in items if item.strip())


def gsm8k_example(fields: Fields) -> ReasoningExample:
    """Steps the lines of ``answer`` before its ``#### `` line, the answer what follows it."""
    question = fields.question()
    lines = [line.strip() for line in fields.text("answer").split("\n") if line.strip()]
    match = re.fullmatch(r"####\s*(.+)", lines[-1]) if lines else None
    if match is None:
        raise BadRow("no_final_answer")
    return ReasoningExample(question, tuple(lines[:-1]), match.group(1).replace(",", "").strip())


def steps_example(fields: Fields) -> ReasoningExample:
    """Steps a list (or lines), the answer a string or a number."""
    question, answer = fields.question(), fields.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise BadRow(f"not_a_string:{fields.column('answer')}")
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    answer = re.sub(r"^####\s*", "", str(answer).strip())
    if _GROUPED_NUMBER.fullmatch(answer):
        answer = answer.replace(",", "")
    if not answer:
        raise BadRow("empty_answer")
    if not fields.has("steps"):
        raise BadRow(f"missing_field:{fields.column('steps')}")
    return ReasoningExample(question, fields.lines("steps"), answer)


def strategyqa_example(fields: Fields) -> ReasoningExample:
    """The facts as steps, the boolean answer as ``yes`` / ``no``."""
    question, answer = fields.question(), fields.get("answer")
    if not isinstance(answer, bool):
        raise BadRow(f"not_a_boolean:{fields.column('answer')}")
    return ReasoningExample(question, fields.lines("facts"), "yes" if answer else "no")


PARSERS: dict[str, Callable[[Fields], ReasoningExample]] = {
    "gsm8k": gsm8k_example, "steps": steps_example, "strategyqa": strategyqa_example,
}


def detect_format(fields: Fields) -> str:
    """``auto``'s choice for one row (module docstring)."""
    if isinstance(fields.row.get(fields.column("answer")), bool) or fields.has("facts"):
        return "strategyqa"
    return "steps" if fields.has("steps") else "gsm8k"


@dataclass
class ReadReport:
    """What reading one file did: rows seen, rows skipped by reason, the layout each row was read as."""

    path: str
    row_format: str
    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    layouts: Counter = field(default_factory=Counter)

    @property
    def kept(self) -> int:
        return self.rows - sum(self.skipped.values())

    def describe(self, name: str) -> str:
        """One line, as the preference data's report: where, read as what, kept of how many, why skipped."""
        def listing(counts: Counter) -> str:
            return ", ".join(f"{key}={count}" for key, count in counts.most_common()) or "none"

        read_as = listing(self.layouts) if len(self.layouts) > 1 else ", ".join(self.layouts) or "nothing"
        return (f"{name} ({self.path}, row_format={self.row_format}, read as {read_as}): kept {self.kept} of "
                f"{self.rows} rows; skipped: {listing(self.skipped)}")


def check_columns(columns: dict[str, str] | None) -> dict[str, str]:
    """``columns`` checked: only the layouts' field names may be mapped."""
    unknown = sorted(set(columns or {}) - set(FIELDS))
    if unknown:
        raise ValueError(f"columns maps {unknown}, not fields of a reasoning row; map {list(FIELDS)} to your columns")
    return dict(columns or {})


def read_examples(
    path: str | Path, row_format: ReasoningFormat = "auto", columns: dict[str, str] | None = None
) -> tuple[list[ReasoningExample], ReadReport]:
    """The examples of ``path`` and what reading it did (rows skipped by reason, layouts read)."""
    if row_format != "auto" and row_format not in PARSERS:
        raise ValueError(f"unknown format {row_format!r}; choose one of {['auto', *sorted(PARSERS)]}")
    columns = check_columns(columns)
    rows, bad_lines = read_rows(path)
    report = ReadReport(str(path), row_format, rows=len(rows) + bad_lines)
    report.skipped.update({"bad_json": bad_lines} if bad_lines else {})
    examples = []
    for row in rows:
        if not isinstance(row, dict):
            report.skipped["not_an_object"] += 1
            continue
        fields = Fields(row, columns)
        layout = detect_format(fields) if row_format == "auto" else row_format
        report.layouts[layout] += 1
        try:
            examples.append(PARSERS[layout](fields))
        except BadRow as bad:
            report.skipped[bad.reason] += 1
    return examples, report


def load_examples(
    path: str | Path, row_format: ReasoningFormat = "auto", columns: dict[str, str] | None = None
) -> tuple[list[ReasoningExample], int]:
    """The examples of ``path`` and the number of rows skipped (:func:`read_examples` has the reasons)."""
    examples, report = read_examples(path, row_format, columns)
    return examples, report.rows - report.kept
