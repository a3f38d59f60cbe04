"""What tokenising did to each source: rows kept, rows skipped by reason, notes on kept rows, layouts read."""

from __future__ import annotations

from collections import Counter

from datasets import Dataset

from lit_align.data.tokenize import OK

Report = dict[str, Counter]


def tally(tokenised: Dataset, bad_lines: Counter | None = None) -> Report:
    """Counts of a tokenised source (``status``, ``notes`` and ``layout`` columns) plus the bad lines skipped
    while reading it, by reason (``bad_json``, ``bad_utf8``)."""
    columns = tokenised.select_columns(["status", "notes", "layout"]).to_dict()
    skipped = Counter(status for status in columns["status"] if status != OK)
    skipped.update(bad_lines or Counter())
    return {
        "rows": Counter({"total": len(tokenised) + sum((bad_lines or Counter()).values())}),
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
