"""What tokenising did to each source: rows kept, rows skipped by reason, notes on kept rows, layouts read."""

from __future__ import annotations

from collections import Counter

from datasets import Dataset
from lightning.pytorch.utilities import rank_zero_warn

from lit_align.data.tokenize import OK

Report = dict[str, Counter]


def tally(tokenised: Dataset, bad_lines: Counter | None = None) -> Report:
    """Counts of a tokenised source (``status``, ``notes`` and ``layout`` columns) plus the bad lines skipped
    while reading it, by reason (``bad_json``, ``bad_utf8``)."""
    columns = tokenised.select_columns(["status", "notes", "layout"]).to_dict()
    skipped = Counter(status for status in columns["status"] if status != OK)
    skipped.update(bad_lines or Counter())
    truncated = sum(1 for status, notes in zip(columns["status"], columns["notes"], strict=True)
                    if status == OK and any(note.endswith("_truncated") for note in notes))
    rows = Counter(total=len(tokenised) + sum((bad_lines or Counter()).values()))
    if truncated:
        rows["truncated"] = truncated  # kept pairs cut to fit the lengths
    return {
        "rows": rows,
        "skipped": skipped,
        "notes": Counter(note for notes in columns["notes"] for note in notes),
        "layouts": Counter(columns["layout"]),
    }


def describe_report(name: str, report: Report, source: str | None = None) -> str:
    """One line: where the rows came from and the layout they were read as, how many were kept, why the others
    were skipped, and what was done to kept rows."""
    total, skipped = report["rows"]["total"], sum(report["skipped"].values())

    def listing(counts: Counter) -> str:
        return ", ".join(f"{reason}={count}" for reason, count in counts.most_common()) or "none"

    layouts = report.get("layouts", Counter())
    read_as = ", ".join(layouts) if len(layouts) <= 1 else listing(layouts)
    where = f" ({source}, read as {read_as or 'nothing'})" if source is not None else ""
    return (
        f"{name}{where}: kept {total - skipped} of {total} pairs; skipped: {listing(report['skipped'])}; "
        f"notes on kept pairs: {listing(report['notes'])}"
    )


def warn_if_mostly_truncated(name: str, report: Report, lengths) -> None:
    """One warning when more than half of the kept pairs were cut to fit ``lengths`` (``max_length`` 8 cuts every
    pair to 8 tokens and would train on the stubs without a word)."""
    kept = report["rows"]["total"] - sum(report["skipped"].values())
    truncated = report["rows"]["truncated"]
    if kept and truncated > kept / 2:
        rank_zero_warn(f"{name}: {truncated} of {kept} kept pairs ({truncated / kept:.0%}) were cut to fit "
                       f"data.max_length={lengths.max_length} (prompts to data.max_prompt_length="
                       f"{lengths.max_prompt_length}); raise them, or the run trains on cut pairs")
