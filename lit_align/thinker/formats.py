"""Local reasoning files in the authors' formats → :class:`~lit_align.thinker.encoding.ReasoningExample`.

- ``gsm8k``: ``{"question": ..., "answer": "step 1\\nstep 2\\n#### 72"}`` (GSM8K, also its Socratic variant and the
  authors' GSM-style AQuA and date-understanding files): the steps are the lines before ``#### ``, the answer
  follows it (thousands separators removed).
- ``strategyqa``: ``{"question": ..., "answer": true, "facts": "fact 1\\nfact 2"}``: the facts are the steps and
  the answer is ``yes`` or ``no``.

Files are JSON lines, or one JSON array (as the authors' ``strategyqa_test.json``). A row that does not fit its
format (no question, no ``####`` line, a non-boolean StrategyQA answer, unparsable JSON) is skipped and counted.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Literal

from lit_align.thinker.encoding import ReasoningExample

ReasoningFormat = Literal["gsm8k", "strategyqa"]
log = logging.getLogger(__name__)


def read_rows(path: str | Path) -> tuple[list[Any], int]:
    """The rows of a JSON-lines file or a JSON array, and how many lines were not valid JSON."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text), 0
    rows, bad = [], 0
    for line in filter(str.strip, text.splitlines()):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    return rows, bad


def gsm8k_example(row: Any) -> ReasoningExample | None:
    if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
        return None
    lines = [line.strip() for line in row["answer"].strip().split("\n") if line.strip()]
    match = re.fullmatch(r"####\s*(.+)", lines[-1]) if lines else None
    if match is None:
        return None
    return ReasoningExample(row["question"].strip(), tuple(lines[:-1]), match.group(1).replace(",", "").strip())


def strategyqa_example(row: Any) -> ReasoningExample | None:
    if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), bool):
        return None
    facts = row.get("facts", "")
    facts = facts if isinstance(facts, list) else str(facts).split("\n")
    steps = tuple(fact.strip() for fact in facts if fact.strip())
    return ReasoningExample(row["question"].strip(), steps, "yes" if row["answer"] else "no")


PARSERS = {"gsm8k": gsm8k_example, "strategyqa": strategyqa_example}


def load_examples(path: str | Path, row_format: ReasoningFormat) -> tuple[list[ReasoningExample], int]:
    """The examples of ``path`` and the number of rows skipped (logged)."""
    if row_format not in PARSERS:
        raise ValueError(f"unknown format {row_format!r}; choose one of {sorted(PARSERS)}")
    rows, skipped = read_rows(path)
    examples = [PARSERS[row_format](row) for row in rows]
    skipped += sum(example is None for example in examples)
    if skipped:
        log.warning("%s: skipped %d rows that are not %s rows", path, skipped, row_format)
    return [example for example in examples if example is not None], skipped
