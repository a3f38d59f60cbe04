"""``PreferenceDataModule``: preference pairs from a file, a saved dataset or a dataset name, tokenised and
batched for alignment."""

from __future__ import annotations

import gzip
from collections import Counter
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning as L
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from jsonargparse.typing import NonNegativeInt
from lightning.pytorch.utilities import AttributeDict, rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lit_align.data.collator import PairCollator
from lit_align.data.formats import RowFormat
from lit_align.data.sampler import TrainOrder
from lit_align.data.tokenize import OK, LengthSettings, PairTokenizer, TruncationMode

_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
PAIR_COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids", "example_key"]


def load_rows(path: str, split: str) -> Dataset:
    """Raw rows from a local file (jsonl/json/parquet/csv, optionally .gz), a ``save_to_disk`` directory
    or a dataset name on the hub; any failure is a ValueError naming ``path`` and the innermost cause."""
    try:
        rows = _read_rows(Path(path), path, split)
        rows.data.table.validate(full=True)  # Arrow's JSON reader keeps invalid UTF-8 until a row is read
    except Exception as error:  # datasets wraps parse errors (invalid UTF-8, bad JSON) in its own classes
        message = f"could not read preference data from {path!r} (split {split!r}): {_reason(error)}"
        raise ValueError(message) from error
    return rows


def _read_rows(local: Path, path: str, split: str) -> Dataset:
    if local.is_dir():
        saved = load_from_disk(str(local))
        if isinstance(saved, DatasetDict) and split not in saved:
            raise ValueError(f"no split {split!r}; the saved dataset has {sorted(saved)}")
        return saved[split] if isinstance(saved, DatasetDict) else saved
    if local.is_file():
        suffix = Path(local.name.removesuffix(".gz")).suffix
        if suffix not in _BUILDERS:
            raise ValueError(f"unsupported file type {suffix!r}; use one of {sorted(_BUILDERS)}")
        if _is_blank(local):
            raise ValueError("the file is empty")
        return load_dataset(_BUILDERS[suffix], data_files=str(local), split="train")
    return load_dataset(path, split=split)


def _is_blank(local: Path) -> bool:
    opener = gzip.open if local.suffix == ".gz" else open
    with opener(local, "rb") as handle:
        return not any(chunk.strip() for chunk in iter(lambda: handle.read(1 << 20), b""))


def _reason(error: BaseException) -> str:
    """The innermost cause as ``Type: message`` (datasets hides e.g. a UnicodeDecodeError behind its own)."""
    while error.__cause__ is not None:
        error = error.__cause__
    if "corresponds to no data" in str(error):  # how datasets says that a file parsed to zero rows
        return "the file holds no rows"
    return f"{type(error).__name__}: {error}"


class PreferenceDataModule(L.LightningDataModule):
    """Preference pairs, tokenised with ``datasets.map`` (cached) and batched by :class:`PairCollator`.

    Bad rows are counted by reason and skipped; the counts are logged at setup and kept in ``report``. Training
    pairs come in a seeded order (:class:`~lit_align.data.sampler.TrainOrder`), shared out between data-parallel
    processes, whose position checkpoints keep, so a run resumed mid-epoch continues with the next batch.

    Args:
        path: a local file, a ``save_to_disk`` directory or a dataset name.
        tokenizer: path or name of the tokenizer (its chat template renders conversational rows).
        row_format: ``auto`` | ``explicit`` | ``conversational`` | ``hh``.
        split: the split of ``path`` to train on.
        val_path: held-out pairs; when unset, ``val_fraction`` of ``path`` is held out.
        val_split: the split of ``val_path`` (or of ``path``) to validate on, when it has splits.
        val_fraction: fraction of the training pairs held out when ``val_path`` is unset (0 disables).
        max_length, max_prompt_length, truncation_mode: see :class:`LengthSettings`.
        batch_size: pairs per training batch (per process).
        eval_batch_size: pairs per validation batch; defaults to ``batch_size``.
        num_workers: DataLoader workers.
        seed: seed of the validation split and of the training order.
        trust_remote_code: allow the tokenizer's own code from the hub (off unless asked for).
        group_by_length: batch pairs of similar length, so little compute goes to padding: the training shuffle is
            sorted by length within windows of this many batches, then the batches are shuffled
            (:func:`~lit_align.data.sampler.length_grouped`); 0 (the default) keeps the plain shuffle.
    """

    def __init__(
        self,
        path: str,
        tokenizer: str,
        row_format: RowFormat = "auto",
        split: str = "train",
        val_path: str | None = None,
        val_split: str = "test",
        val_fraction: float = 0.05,
        max_length: int = 512,
        max_prompt_length: int = 256,
        truncation_mode: TruncationMode = "keep_end",
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        trust_remote_code: bool = False,
        group_by_length: NonNegativeInt = 0,
    ) -> None:
        super().__init__()
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must lie in [0, 1), got val_fraction={val_fraction}")
        if group_by_length < 0:
            raise ValueError(f"group_by_length must be >= 0 (0 turns it off), got group_by_length={group_by_length}")
        self.save_hyperparameters()
        # the settings this class reads; a subclass's own hyperparameters may differ (see ControlledTaskDataModule)
        self.settings = AttributeDict(
            path=path, tokenizer=tokenizer, row_format=row_format, split=split, val_path=val_path,
            val_split=val_split, val_fraction=val_fraction, batch_size=batch_size, eval_batch_size=eval_batch_size,
            num_workers=num_workers, seed=seed, trust_remote_code=trust_remote_code, group_by_length=group_by_length,
        )
        self.lengths = LengthSettings(max_length, max_prompt_length, truncation_mode)
        self.report: dict[str, dict[str, Counter]] = {}
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.train_order: TrainOrder | None = None
        self._order_state: dict[str, Any] | None = None

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return AutoTokenizer.from_pretrained(
            self.settings.tokenizer, trust_remote_code=self.settings.trust_remote_code
        )

    @property
    def pad_token_id(self) -> int:
        """The pad id; a tokenizer without one pads with EOS (pads are masked out either way)."""
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def prepare_data(self) -> None:
        """Tokenise once per node; ``datasets`` caches the result for ``setup``."""
        self._tokenised_splits()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set, self.val_set = self._tokenised_splits()
        for name, counts in self.report.items():
            rank_zero_info(describe_report(name, counts))

    def train_dataloader(self) -> DataLoader:
        replicas = (self.trainer.distributed_sampler_kwargs if self.trainer is not None else None) or {}
        grouping = {}
        if self.settings.group_by_length:
            grouping = dict(lengths=pair_lengths(self.train_set), batch_size=self.settings.batch_size,
                            window=self.settings.group_by_length)
        self.train_order = TrainOrder(self.train_set, seed=self.settings.seed, **replicas, **grouping)
        if self._order_state is not None:
            self.train_order.load_state_dict(self._order_state)
        return self._loader(self.train_set, self.settings.batch_size, sampler=self.train_order)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return self._loader(self.val_set, self.settings.eval_batch_size or self.settings.batch_size)

    def _loader(self, split: Dataset, batch_size: int, sampler: TrainOrder | None = None) -> DataLoader:
        return DataLoader(
            split,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=PairCollator(self.pad_token_id),
            num_workers=self.settings.num_workers,
        )

    def predict_dataloader(self) -> list[DataLoader]:
        """Every training and validation pair, unshuffled (used to fill the offline reference store)."""
        splits = [split for split in (self.train_set, self.val_set) if split is not None]
        return [self._loader(split, self.settings.eval_batch_size or self.settings.batch_size) for split in splits]

    def on_before_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        """Count each batch the training loop takes (not the ones its fetcher reads ahead) in the training order."""
        if self.trainer is not None and self.trainer.training and self.train_order is not None:
            self.train_order.advance(len(batch["example_key"]))
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The training order's epoch and position, saved in every checkpoint."""
        return {"train_order": self.train_order.state_dict()} if self.train_order is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._order_state = state_dict.get("train_order")
        if self.train_order is not None and self._order_state is not None:
            self.train_order.load_state_dict(self._order_state)

    def _tokenised_splits(self) -> tuple[Dataset, Dataset | None]:
        hp = self.settings
        train = self._tokenise("train", load_rows(hp.path, hp.split), hp.path)
        if hp.val_path is not None:
            return train, self._tokenise("validation", load_rows(hp.val_path, hp.val_split), hp.val_path)
        if hp.val_fraction == 0:
            return train, None
        try:  # datasets refuses a split that would leave either side empty
            parts = train.train_test_split(test_size=hp.val_fraction, seed=hp.seed)
        except ValueError as error:
            raise ValueError(
                f"val_fraction={hp.val_fraction} of {len(train)} usable pairs leaves an empty split; "
                "change val_fraction or give val_path"
            ) from error
        return parts["train"], parts["test"]

    def _tokenise(self, name: str, rows: Dataset, path: str) -> Dataset:
        if len(rows) == 0:
            raise ValueError(f"the {name} data at {path!r} has no rows")
        tokenised = rows.map(
            PairTokenizer(self.tokenizer, self.settings.row_format, self.lengths),
            batched=True,
            remove_columns=rows.column_names,
            desc=f"Tokenising {name} pairs",
        )
        self.report[name] = {
            "rows": Counter({"total": len(tokenised)}),
            "skipped": Counter(s for s in tokenised["status"] if s != OK),
            "notes": Counter(note for notes in tokenised["notes"] for note in notes),
        }
        kept = tokenised.filter(lambda status: status == OK, input_columns="status").select_columns(PAIR_COLUMNS)
        if len(kept) == 0:
            raise ValueError(f"no usable pairs in the {name} data: {describe_report(name, self.report[name])}")
        return kept


def pair_lengths(pairs: Dataset) -> list[int]:
    """Each pair's padded length in a batch: its prompt plus the longer of its two responses."""
    table = pairs.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).with_format("arrow")[:]
    prompt, chosen, rejected = (pc.list_value_length(table[name]) for name in table.column_names)
    return pc.add(prompt, pc.max_element_wise(chosen, rejected)).to_pylist()


def describe_report(name: str, report: dict[str, Counter]) -> str:
    """One line: how many rows were kept, why the others were skipped, and what was done to kept rows."""
    total, skipped = report["rows"]["total"], sum(report["skipped"].values())

    def listing(counts: Counter) -> str:
        return ", ".join(f"{reason}={count}" for reason, count in counts.most_common()) or "none"

    return (
        f"{name}: kept {total - skipped} of {total} pairs; skipped: {listing(report['skipped'])}; "
        f"notes on kept pairs: {listing(report['notes'])}"
    )
