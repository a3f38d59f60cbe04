"""``PromptDataModule``: prompts alone, for on-policy training (:class:`~lit_align.online.on_policy.OnPolicyModule`).

The training side reads prompts (:mod:`lit_align.online.prompt_rows`) from the same sources as
:class:`~lit_align.data.PreferenceDataModule` (a file or dataset in any pair layout, a mixture, the controlled
task), and batches them left-padded, ready for ``generate``. The order is the pairs' own
(:class:`~lit_align.data.sampler.TrainOrder`: a seeded shuffle per epoch, dealt round-robin to the data-parallel
processes, its position saved in checkpoints), so a run resumed mid-epoch samples the very prompts the interrupted
run would have sampled next. Validation, when the source has held-out pairs (``val_path``, or the controlled task's),
reads them as pairs, so the module's held-out preference metrics are logged as for offline training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from datasets import Dataset
from torch import Tensor
from torch.utils.data import DataLoader

from lit_align.data.datamodule import PreferenceDataModule
from lit_align.data.duplicates import deduplicated
from lit_align.data.report import describe_report, tally, warn_if_mostly_truncated
from lit_align.data.sampler import TrainOrder
from lit_align.data.sources import DataSource
from lit_align.data.tokenize import OK
from lit_align.errors import ConfigError
from lit_align.online.prompt_rows import KEPT_COLUMNS, PromptTokenizer
from lit_align.paths import resolve_local_or_hub


class PromptCollator:
    """Left-pads a batch of prompts: ``input_ids`` and ``attention_mask`` ``(B, T)`` (each prompt ends at the last
    column, where generation continues), ``example_key`` ``(B,)`` (which the training order counts) and
    ``prompt_text`` (a list of the texts the reward function reads)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, prompts: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(prompt["prompt_ids"]) for prompt in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids = prompt["prompt_ids"]
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "example_key": torch.tensor([prompt["example_key"] for prompt in prompts], dtype=torch.long),
            "prompt_text": [prompt["prompt_text"] for prompt in prompts],
        }


def prompt_lengths(prompts: Dataset) -> list[int]:
    """Each prompt's length, read as one column."""
    return [len(ids) for ids in prompts["prompt_ids"]]


def pair_lengths(pairs: list[dict[str, Any]]) -> list[int]:
    """Each round pair's padded length: its prompt plus the longer of its two responses."""
    return [len(pair["prompt_ids"]) + max(len(pair["chosen_ids"]), len(pair["rejected_ids"])) for pair in pairs]


def prompt_ids(batch: dict[str, Tensor]) -> list[list[int]]:
    """Each prompt's ids without its left padding."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"], strict=True)]


class PromptDataModule(PreferenceDataModule):
    """Prompts from a source, for on-policy training; :class:`~lit_align.data.PreferenceDataModule`'s arguments.

    ``batch_size`` is prompts per training batch (per process); each is sampled ``samples_per_prompt`` times by the
    module. ``max_prompt_length`` and ``truncation_mode`` cut prompts; ``max_length`` is unused in training (the
    responses' length is ``max_new_tokens``) and applies to the validation pairs. ``group_by_length`` groups prompts
    of similar length. ``val_fraction`` must be 0 unless the source has held-out pairs: held-out prompts make no
    pairs to validate on (give ``val_path`` with preference pairs instead).
    """

    def _tokenised_splits(self) -> tuple[Dataset, Dataset | None]:
        hp, parts = self.hparams, self.source.parts()
        for key in ("path", "val_path"):
            if hp.get(key) is not None:
                resolve_local_or_hub(f"data.{key}", hp[key], "dataset")
        if self.val_source is None and hp.val_fraction:
            raise ConfigError("data.val_fraction", hp.val_fraction, "0 for prompts: held-out prompts make no pairs to "
                              "validate on; give val_path (preference pairs) to validate")
        train = self.source.mix([self._prompts("train" if len(parts) == 1 else f"train[{index}]", part)
                                 for index, part in enumerate(parts)])
        return train, (self._tokenise("validation", self.val_source) if self.val_source is not None else None)

    def _prompts(self, name: str, source: DataSource) -> Dataset:
        """The usable prompts of ``source``, counted by reason as pairs are (:mod:`lit_align.data.report`)."""
        rows, bad_lines = source.load()
        if len(rows) == 0:
            raise ValueError(f"the {name} prompts at {source!r} have no rows")
        tokenizer = PromptTokenizer(self.tokenizer, source.row_format, self.lengths, self.hparams.system_prompt)
        tokenised = rows.map(tokenizer, batched=True, remove_columns=rows.column_names, num_proc=self.hparams.num_proc,
                             desc=f"Tokenising {name} prompts")
        self.report[name] = report = tally(tokenised, bad_lines)
        self._labels[name] = repr(source)
        kept = tokenised.filter(lambda status: status == OK, input_columns="status", num_proc=self.hparams.num_proc)
        if len(kept) == 0:
            raise ValueError(f"no usable prompts in the {name} data: {describe_report(name, report, repr(source))}")
        warn_if_mostly_truncated(name, report, self.lengths)
        return deduplicated(kept.select_columns(KEPT_COLUMNS), name, self.hparams.drop_duplicates)

    def train_dataloader(self) -> DataLoader:
        """The prompts in :class:`~lit_align.data.sampler.TrainOrder`, left-padded by :class:`PromptCollator`; for
        an iterative module (``model.iterative``), the epoch's round: the pairs it samples from those prompts, in a
        training order of their own (:mod:`lit_align.online.rounds`)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        if not getattr(module, "iterative", False):
            self.train_order = self._order(self.train_set, prompt_lengths, self._order_state)
            return self._prompt_loader(self.train_order)
        prompts = self._order(self.train_set, prompt_lengths, None)
        prompts.set_epoch(self.trainer.current_epoch)
        pairs = module.round_pairs(self._prompt_loader(prompts), self.trainer.current_epoch)
        self.train_order = self._order(pairs, pair_lengths, self._order_state)
        return self._loader(pairs, self.hparams.batch_size, sampler=self.train_order)

    def _order(self, rows: Any, lengths: Callable[[Any], list[int]], state: dict[str, int] | None) -> TrainOrder:
        """A training order over ``rows`` (grouped by their ``lengths(rows)`` with ``group_by_length``) at position
        ``state``."""
        replicas = (self.trainer.distributed_sampler_kwargs if self.trainer is not None else None) or {}
        grouping = {}
        if self.hparams.group_by_length:
            grouping = dict(lengths=lengths(rows), batch_size=self.hparams.batch_size,
                            window=self.hparams.group_by_length)
        order = TrainOrder(rows, seed=self.hparams.seed, **replicas, **grouping)
        if state is not None:
            order.load_state_dict(state)
        return order

    def _prompt_loader(self, order: TrainOrder) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, sampler=order,
                          collate_fn=PromptCollator(self.pad_token_id), num_workers=self.hparams.num_workers)

    def predict_dataloader(self) -> list[DataLoader]:
        raise ValueError("prompts have no pairs whose reference log-probs could be precomputed: on-policy pairs are "
                         "sampled during training (use FrozenCopy or DisabledAdapter, not OfflineStore)")
