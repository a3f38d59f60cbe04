"""A source's rows made into the pairs training reads: tokenised with batched ``datasets.map`` (cached), each row
kept or skipped by reason, and the report of what was done (:mod:`lit_align.data.report`)."""

from __future__ import annotations

from datasets import Dataset

from lit_align.data.report import Report, describe_report, tally
from lit_align.data.sources import DataSource
from lit_align.data.tokenize import OK, PairTokenizer

PAIR_COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids", "example_key"]


def usable_pairs(name: str, source: DataSource, tokenizer: PairTokenizer, num_proc: int | None
                 ) -> tuple[Dataset, Report]:
    """The usable pairs of ``source`` (:data:`PAIR_COLUMNS`) and its report; a source with no rows, or none
    usable, is a clear error naming it and the counts."""
    rows, bad_lines = source.load()
    if len(rows) == 0:
        raise ValueError(f"the {name} data at {source!r} has no rows")
    tokenised = rows.map(tokenizer, batched=True, remove_columns=rows.column_names, num_proc=num_proc,
                         desc=f"Tokenising {name} pairs")
    report = tally(tokenised, bad_lines)
    kept = tokenised.filter(lambda status: status == OK, input_columns="status", num_proc=num_proc)
    if len(kept) == 0:
        raise ValueError(f"no usable pairs in the {name} data: {describe_report(name, report, repr(source))}")
    return kept.select_columns(PAIR_COLUMNS), report
