"""``PreferenceDataModule``: preference pairs from a source (a file, a dataset, a mixture, a task), tokenised and
batched for alignment."""

from __future__ import annotations

import inspect
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import lightning as L
from datasets import Dataset, concatenate_datasets
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lit_align.data.chat import resolve_chat_template
from lit_align.data.collator import PairCollator
from lit_align.data.duplicates import deduplicated, held_out_split
from lit_align.data.layouts import Layout
from lit_align.data.pairs import usable_pairs
from lit_align.data.report import Report, describe_report, warn_if_mostly_truncated
from lit_align.data.sampler import TrainOrder, pair_lengths
from lit_align.data.sources import DataSource, PairSource
from lit_align.data.tokenize import LengthSettings, PairTokenizer, TruncationMode
from lit_align.errors import ConfigError
from lit_align.hyperparameters import save_plain_hyperparameters
from lit_align.paths import resolve_local_or_hub
from lit_align.validation import HoldOutFraction, require_counts


class PreferenceDataModule(L.LightningDataModule):
    """Preference pairs from a source, tokenised with batched ``datasets.map`` (cached) and batched by
    :class:`PairCollator`.

    The pairs come from ``path`` (with ``split``, ``name``, ``data_dir``, ``data_files``, ``revision``,
    ``row_format``, ``columns``, ``skip_bad_lines``: one :class:`~lit_align.data.sources.DataSource`) or from
    ``source``: a ``DataSource``, a weighted :class:`~lit_align.data.sources.Mixture`, or a task that builds its
    pairs (:class:`~lit_align.tasks.ControlledTask`). Bad rows are counted by reason and skipped; the counts and
    the layout each source was read as are logged at setup and kept in ``report``. Training pairs come in a seeded
    order (:class:`~lit_align.data.sampler.TrainOrder`), shared out between data-parallel processes, whose
    position checkpoints keep, so a run resumed mid-epoch continues with the next batch.

    Args:
        path: a local file, a directory or a dataset name (or give ``source``).
        tokenizer: path or name of the tokenizer; unset, the source's own (the controlled task's).
        row_format: the layout of ``path``'s rows: ``auto`` | ``explicit`` | ``implicit`` | ``conversational`` |
            ``hh`` (see :mod:`lit_align.data.layouts`).
        split: the split of ``path`` to train on, with slicing (``train[:10%]``).
        val_path: held-out pairs; when unset (and the source has none), ``val_fraction`` of each training source
            is held out.
        val_split: the split of ``val_path`` to validate on.
        val_fraction: fraction of the training pairs held out when there is no validation source (0 disables).
        max_length, max_prompt_length, truncation_mode: see :class:`LengthSettings`.
        batch_size: pairs per training batch (per process).
        eval_batch_size: pairs per validation batch; defaults to ``batch_size``.
        num_workers: DataLoader workers.
        seed: seed of the validation split and of the training order.
        trust_remote_code: allow the tokenizer's own code from the hub (off unless asked for).
        group_by_length: batch pairs of similar length, so little compute goes to padding: the training shuffle is
            sorted by length within windows of this many batches, then the batches are shuffled
            (:func:`~lit_align.data.sampler.length_grouped`); 0 (the default) keeps the plain shuffle.
        source: where the pairs come from, instead of ``path``.
        name, data_dir, data_files, revision: passed to :func:`datasets.load_dataset` for ``path``.
        columns: ``path``'s column names for the layout's fields, e.g. ``{prompt: question}``.
        skip_bad_lines: skip and count (``bad_json``, ``bad_utf8``) JSON lines of ``path`` that do not parse or
            are not valid UTF-8.
        chat_template: a Jinja chat template (the string, or a file holding it) replacing the tokenizer's.
        system_prompt: a system message put first in conversations that have none.
        num_proc: processes tokenising (``datasets.map``); unset tokenises in this process.
        pack_row_tokens: about how many tokens a row of the prompt-shared, padding-free layout holds
            (:mod:`lit_align.data.packing`; the module runs it with ``AlignmentModule(packing=True)``) where
            attention runs over whole rows (eager attention, compiled layers, FlexAttention): a batch's pairs go
            into ``ceil(tokens / pack_row_tokens)`` nearly equal rows, so that attention, whose cost per token grows
            with the row, stays cheap; ``None`` puts every batch in one row. A model on SDPA attends by pair
            (:mod:`lit_align.models.pair_attention`) and runs every batch as one row, without padding.
        drop_duplicates: keep each repeated pair once (repeats are counted and warned of either way; a held-out
            pair is never a copy of a training pair, :mod:`lit_align.data.duplicates`).
    """

    def __init__(
        self,
        path: str | None = None,
        tokenizer: str | None = None,
        row_format: Layout = "auto",
        split: str = "train",
        val_path: str | None = None,
        val_split: str = "test",
        val_fraction: HoldOutFraction = 0.05,
        max_length: PositiveInt = 512,
        max_prompt_length: PositiveInt = 256,
        truncation_mode: TruncationMode = "keep_end",
        batch_size: PositiveInt = 4,
        eval_batch_size: PositiveInt | None = None,
        num_workers: NonNegativeInt = 0,
        seed: int = 0,
        trust_remote_code: bool = False,
        group_by_length: NonNegativeInt = 0,
        source: PairSource | None = None,
        name: str | None = None,
        data_dir: str | None = None,
        data_files: str | list[str] | dict[str, str | list[str]] | None = None,
        revision: str | None = None,
        columns: dict[str, str] | None = None,
        skip_bad_lines: bool = False,
        chat_template: str | None = None,
        system_prompt: str | None = None,
        num_proc: PositiveInt | None = None,
        pack_row_tokens: PositiveInt | None = 512,
        drop_duplicates: bool = False,
    ) -> None:
        super().__init__()
        require_counts(**{"data.batch_size": batch_size, "data.eval_batch_size": eval_batch_size})
        if not 0 <= val_fraction < 1:
            raise ConfigError("data.val_fraction", val_fraction, "val_fraction must lie in [0, 1) (0 disables)")
        if group_by_length < 0:
            raise ValueError(f"group_by_length must be >= 0 (0 turns it off), got group_by_length={group_by_length}")
        if (path is None) == (source is None):
            raise ValueError("give the data as path (a file, directory or dataset name) or as source, not both")
        save_plain_hyperparameters(self, inspect.currentframe())  # a source built in Python is left out
        loading = dict(row_format=row_format, columns=columns, skip_bad_lines=skip_bad_lines)
        hub = dict(name=name, data_dir=data_dir, data_files=data_files, revision=revision)
        self.source = source or DataSource(path, split, **hub, **loading)
        self.val_source = self.source.validation()
        if val_path is not None:
            self.val_source = DataSource(val_path, val_split, **(hub if val_path == path else {}), **loading)
        self.lengths = LengthSettings(max_length, max_prompt_length, truncation_mode)
        self.chat_template = resolve_chat_template(chat_template)
        self.report: dict[str, Report] = {}
        self._labels: dict[str, str] = {}
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.train_order: TrainOrder | None = None
        self._order_state: dict[str, Any] | None = None
        self.layout: Literal["padded", "packed"] | None = None
        """The layout training and validation batches are built in, once the module has decided; ``None``: both."""

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer (``tokenizer``, else the source's), with ``chat_template`` when one is given."""
        path = self.hparams.tokenizer or self.source.tokenizer
        if path is None:
            raise ValueError("no tokenizer: set the data module's tokenizer (a path or a name)")
        path = resolve_local_or_hub("data.tokenizer", path)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=self.hparams.trust_remote_code)
        if self.chat_template is not None:
            tokenizer.chat_template = self.chat_template
        return tokenizer

    @property
    def heldout_prompts_path(self) -> Path:
        """Prompts for evaluation by sampling, from a source that has them (the controlled task's)."""
        if not hasattr(self.source, "heldout_prompts_path"):
            raise AttributeError(f"the data source {self.source!r} has no held-out prompts; give prompts_path")
        return self.source.heldout_prompts_path

    @property
    def pad_token_id(self) -> int:
        """The pad id; a tokenizer without one pads with EOS (pads are masked out either way)."""
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def prepare_data(self) -> None:
        """Build or download the source, then tokenise, once per node; ``datasets`` caches the result for ``setup``."""
        self.source.prepare()
        self._tokenised_splits()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set, self.val_set = self._tokenised_splits()
        for name, counts in self.report.items():
            rank_zero_info(describe_report(name, counts, self._labels.get(name)))
        if self.val_set is not None and self.val_source is None:
            rank_zero_info(f"validation: held out {len(self.val_set)} pairs (val_fraction={self.hparams.val_fraction} "
                           f"of the kept train pairs); training on {len(self.train_set)}")

    def train_dataloader(self) -> DataLoader:
        replicas = (self.trainer.distributed_sampler_kwargs if self.trainer is not None else None) or {}
        grouping = {}
        if self.hparams.group_by_length:
            grouping = dict(lengths=pair_lengths(self.train_set), batch_size=self.hparams.batch_size,
                            window=self.hparams.group_by_length)
        self.train_order = TrainOrder(self.train_set, seed=self.hparams.seed, **replicas, **grouping)
        if self._order_state is not None:
            self.train_order.load_state_dict(self._order_state)
        return self._loader(self.train_set, self.hparams.batch_size, sampler=self.train_order)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return self._loader(self.val_set, self.hparams.eval_batch_size or self.hparams.batch_size)

    def _loader(self, split: Dataset, batch_size: int, sampler: TrainOrder | None = None, both: bool = False
                ) -> DataLoader:
        layout = None if both else self.layout
        collate = PairCollator(self.pad_token_id, row_tokens=self.hparams.pack_row_tokens, layout=layout)
        return DataLoader(split, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                          num_workers=self.hparams.num_workers)

    def predict_dataloader(self) -> list[DataLoader]:
        """Every training and validation pair, unshuffled (used to fill the offline reference store)."""
        splits = [split for split in (self.train_set, self.val_set) if split is not None]
        return [self._loader(split, self.hparams.eval_batch_size or self.hparams.batch_size, both=True)
                for split in splits]

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
        hp, parts = self.hparams, self.source.parts()
        for key in ("path", "val_path"):  # a typo fails here, not after a round of hub retries
            if hp.get(key) is not None:
                resolve_local_or_hub(f"data.{key}", hp[key], "dataset")
        train_parts, val_parts = [], []
        for index, part in enumerate(parts):
            pairs = self._tokenise("train" if len(parts) == 1 else f"train[{index}]", part)
            if self.val_source is not None or hp.val_fraction == 0:
                train_parts.append(pairs)
                continue
            train, held_out = held_out_split(pairs, hp.val_fraction, hp.seed, repr(part))
            train_parts.append(train)
            val_parts.append(held_out)
        train = self.source.mix(train_parts)
        if self.val_source is not None:
            return train, self._tokenise("validation", self.val_source)
        return train, (concatenate_datasets(val_parts) if val_parts else None)

    def _tokenise(self, name: str, source: DataSource) -> Dataset:
        tokenizer = PairTokenizer(self.tokenizer, source.row_format, self.lengths, self.hparams.system_prompt)
        kept, self.report[name] = usable_pairs(name, source, tokenizer, self.hparams.num_proc)
        self._labels[name] = repr(source)
        warn_if_mostly_truncated(name, self.report[name], self.lengths)
        return deduplicated(kept, name, self.hparams.drop_duplicates)
