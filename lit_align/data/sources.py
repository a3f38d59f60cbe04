"""Where preference rows come from: one file or dataset (:class:`DataSource`), a weighted mixture of several
(:class:`Mixture`), or anything else that builds its own pairs (a :class:`PairSource`, such as the controlled
task's :class:`~lit_align.tasks.ControlledTask`).

A source is read as ``datasets`` reads it: a dataset name with ``name`` (config), ``data_dir``, ``data_files``,
``revision`` and split slicing (``train[:10%]``), passed through to :func:`datasets.load_dataset`; a local file
(jsonl/json/parquet/csv, optionally ``.gz``) or directory of such files; a ``save_to_disk`` directory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from datasets import (
    Dataset,
    DatasetDict,
    ReadInstruction,
    concatenate_datasets,
    interleave_datasets,
    load_dataset,
    load_from_disk,
)

from lit_align.data.layouts import Layout
from lit_align.data.lines import BadLine, blank_file, json_rows_skipping_bad_lines

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
_SAVED_MARKERS = ("state.json", "dataset_dict.json")


class PairSource:
    """Where a data module's pairs come from: training sources (weighted), an optional validation source and,
    optionally, the tokenizer that goes with them. :meth:`prepare` builds or downloads what they need, once per
    node, before they are read."""

    tokenizer: str | None = None
    """The tokenizer that goes with the data, used when the data module names none."""

    def prepare(self) -> None:
        """Build or download the data (the data module calls this in ``prepare_data``)."""

    def parts(self) -> list[DataSource]:
        """The sources of the training pairs."""
        raise NotImplementedError

    def validation(self) -> DataSource | None:
        """The held-out pairs' source, when the data comes with one."""
        return None

    def mix(self, parts: Sequence[Dataset]) -> Dataset:
        """The training pairs from each part's tokenised pairs (in :meth:`parts`' order)."""
        return parts[0] if len(parts) == 1 else concatenate_datasets(list(parts))


class DataSource(PairSource):
    """One file or dataset, read in one layout with an optional column mapping.

    Args:
        path: a local file, a directory (of data files, or saved with ``save_to_disk``) or a dataset name.
        split: the split, with ``datasets``' slicing (``train[:10%]``, ``train[100:200]``).
        name: the dataset's configuration name.
        data_dir, data_files, revision: as for :func:`datasets.load_dataset`.
        row_format: the rows' layout (``auto`` detects it row by row; see :mod:`lit_align.data.layouts`).
        columns: the layout's field names -> this source's column names, e.g. ``{prompt: question, chosen:
            response_j, rejected: response_k}``; other columns are ignored.
        weight: this source's share of a :class:`Mixture` (normalised over the mixture).
        skip_bad_lines: skip (and count as ``bad_json`` or ``bad_utf8``) JSON lines that do not parse or are
            not valid UTF-8, instead of failing with the file and line number.
    """

    def __init__(
        self,
        path: str,
        split: str = "train",
        name: str | None = None,
        data_dir: str | None = None,
        data_files: str | list[str] | dict[str, str | list[str]] | None = None,
        revision: str | None = None,
        row_format: Layout = "auto",
        columns: dict[str, str] | None = None,
        weight: float = 1.0,
        skip_bad_lines: bool = False,
    ) -> None:
        if weight <= 0:
            raise ValueError(f"a source's weight must be > 0, got weight={weight} for {path!r}")
        self.path, self.split, self.name, self.data_dir = path, split, name, data_dir
        self.data_files, self.revision, self.row_format = data_files, revision, row_format
        self.columns, self.weight, self.skip_bad_lines = columns, weight, skip_bad_lines

    def parts(self) -> list[DataSource]:
        return [self]

    def __repr__(self) -> str:
        return f"{self.path} [{self.split}]" if self.split != "train" else self.path

    def load(self) -> tuple[Dataset, Counter]:
        """The raw rows, columns renamed by ``columns``, and the bad lines skipped, counted by reason
        (``bad_json``, ``bad_utf8``); any failure to read is a ValueError naming the path (and, for a bad line of
        a JSON file, the line)."""
        try:
            rows, bad_lines = self._read(Path(self.path))
            rows.data.table.validate(full=True)  # Arrow's readers keep invalid UTF-8 until a row is read
        except Exception as error:  # datasets wraps parse errors (invalid UTF-8, bad JSON) in its own classes
            message = f"could not read preference data from {self.path!r} (split {self.split!r}): {reason(error)}"
            raise ValueError(message) from error
        return self._rename(rows), bad_lines

    def _read(self, local: Path) -> tuple[Dataset, Counter]:
        if local.is_dir() and any((local / marker).is_file() for marker in _SAVED_MARKERS):
            return sliced(load_from_disk(str(local)), self.split), Counter()
        if local.is_file():
            suffix = Path(local.name.removesuffix(".gz")).suffix
            if suffix not in _BUILDERS:
                raise ValueError(f"unsupported file type {suffix!r}; use one of {sorted(_BUILDERS)}")
            if blank_file(local):
                raise ValueError("the file is empty")
            try:
                # a lone file is whichever split is asked for, sliced as asked
                files = {name: str(local) for name in _split_names(ReadInstruction.from_spec(self.split))}
                rows = load_dataset(_BUILDERS[suffix], data_files=files, split=self.split)
                if _BUILDERS[suffix] == "json":  # invalid UTF-8 is a bad line, found by the line reader below
                    rows.data.table.validate(full=True)
                return rows, Counter()
            except Exception:
                if _BUILDERS[suffix] != "json":
                    raise
                rows, bad_lines = json_rows_skipping_bad_lines(local, self.skip_bad_lines)  # names the bad line
                if not bad_lines:  # every line reads: datasets failed for another reason
                    raise
                return sliced(Dataset.from_list(rows), self.split), bad_lines
        options = dict(name=self.name, data_dir=self.data_dir, data_files=self.data_files, revision=self.revision)
        return load_dataset(self.path, split=self.split, **options), Counter()

    def _rename(self, rows: Dataset) -> Dataset:
        if not self.columns:
            return rows
        missing = sorted(set(self.columns.values()) - set(rows.column_names))
        if missing:
            raise ValueError(
                f"columns maps to {missing}, which {self.path!r} lacks; its columns are {rows.column_names}"
            )
        rows = rows.select_columns(list(self.columns.values()))
        return rows.rename_columns({column: field for field, column in self.columns.items() if column != field})


class Mixture(PairSource):
    """Several sources, each with its own layout and column mapping, sampled by weight.

    The training pairs are drawn from the sources' tokenised pairs with probabilities proportional to their
    ``weight`` (:func:`datasets.interleave_datasets`, seeded, so the same seed gives the same mixture).

    Args:
        sources: the sources (``weight`` on each; equal by default).
        seed: seed of the draw.
        stopping_strategy: ``first_exhausted`` stops when one source has been used up (no pair repeats);
            ``all_exhausted`` goes on until every source has been used up, repeating the others.
    """

    def __init__(
        self,
        sources: list[DataSource],
        seed: int = 0,
        stopping_strategy: Literal["first_exhausted", "all_exhausted"] = "first_exhausted",
    ) -> None:
        if not sources:
            raise ValueError("a Mixture needs at least one source")
        self.sources, self.seed, self.stopping_strategy = sources, seed, stopping_strategy

    def parts(self) -> list[DataSource]:
        return list(self.sources)

    def mix(self, parts: Sequence[Dataset]) -> Dataset:
        total = sum(source.weight for source in self.sources)
        probabilities = [source.weight / total for source in self.sources]
        return interleave_datasets(
            list(parts), probabilities=probabilities, seed=self.seed, stopping_strategy=self.stopping_strategy
        )


def sliced(saved: Dataset | DatasetDict, split: str) -> Dataset:
    """``split`` (with ``datasets``' slicing, e.g. ``train[:10%]``) of a dataset or dataset dict in memory."""
    instructions = ReadInstruction.from_spec(split)
    if isinstance(saved, Dataset):  # a single saved dataset answers to any split name
        saved = DatasetDict({name: saved for name in _split_names(instructions)})
    missing = sorted(set(_split_names(instructions)) - set(saved))
    if missing:
        raise ValueError(f"no split {missing[0]!r}; the dataset has {sorted(saved)}")
    pieces = [
        saved[piece.splitname].select(range(piece.from_, piece.to))
        for piece in instructions.to_absolute({name: len(rows) for name, rows in saved.items()})
    ]
    return pieces[0] if len(pieces) == 1 else concatenate_datasets(pieces)


def _split_names(instructions: ReadInstruction) -> list[str]:
    return [piece.splitname for piece in instructions._relative_instructions]


def reason(error: BaseException) -> str:
    """The innermost cause as ``Type: message`` (datasets hides e.g. a UnicodeDecodeError behind its own)."""
    while error.__cause__ is not None and not isinstance(error, BadLine):
        error = error.__cause__
    if isinstance(error, BadLine):  # already names the file and the line
        return str(error)
    if "corresponds to no data" in str(error):  # how datasets says that a file parsed to zero rows
        return "the file holds no rows"
    return f"{type(error).__name__}: {error}"
