"""Data modules for latent-thought training: local reasoning files (GSM8K, steps + answer, StrategyQA), and the
built-in arithmetic task."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import lightning as L
from jsonargparse.typing import PositiveInt
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from lit_align.errors import ConfigError
from lit_align.thinker.encoding import ReasoningExample, Target, ThoughtMarkers, collate, encode
from lit_align.thinker.formats import FIELDS, ReadReport, ReasoningFormat, check_columns, read_examples
from lit_align.thinker.task import ArithmeticSettings, make_examples, pretrain_base

log = logging.getLogger(__name__)
LAYOUT_HINT = ("A row needs a question and an answer: GSM8K's answer ending in a '#### <answer>' line, a 'steps' "
               "list with an 'answer', or StrategyQA's boolean 'answer' (row_format: auto reads each); other column "
               "names go in columns, e.g. {question: problem, answer: solution}")


class ReasoningDataModule(L.LightningDataModule):
    """Reasoning examples from local files (:mod:`lit_align.thinker.formats`), encoded for latent thoughts
    (:mod:`lit_align.thinker.encoding`). Rows that fit no layout are skipped and counted by reason, and each
    file's counts are logged (``self.reports``); examples longer than ``max_length`` tokens (base sequence or
    generator prompt with steps) are dropped and counted (``self.dropped``). A split left with no example is a
    ValueError naming the file, the counts and the layouts read.

    Args:
        tokenizer: the base's tokenizer (local path), holding every marker as one token.
        train_path, val_path: JSON-lines (or JSON array) files.
        row_format: ``auto`` (per row, from its fields), ``gsm8k`` (steps, then ``#### answer``), ``steps`` (a
            ``steps`` list and an ``answer``) or ``strategyqa`` (facts as steps, yes/no answer).
        columns: the file's column names for the fields ``question``, ``answer``, ``steps``, ``facts``, e.g.
            ``{question: problem, answer: solution}``.
        num_thoughts: N, the thought slots of the base prompt.
        markers: the marker tokens.
        target: what the base learns to write: the answer alone or the gold steps then the answer.
        max_length, batch_size, eval_batch_size, num_workers: as usual.
        answer_bos: tokenise the answer whose mean embedding ``ē`` picks ``L_focus``'s positive with the
            tokenizer's special tokens (Llama-3: BOS), as the authors' ``tokenizer(answer)``; default: its own
            tokens only (:mod:`lit_align.thinker.encoding`).
    """

    def __init__(
        self,
        tokenizer: str,
        train_path: str | None = None,
        val_path: str | None = None,
        row_format: ReasoningFormat = "auto",
        num_thoughts: PositiveInt = 4,
        markers: ThoughtMarkers | None = None,
        target: Target = "steps_and_answer",
        max_length: PositiveInt = 1024,
        batch_size: PositiveInt = 8,
        eval_batch_size: PositiveInt | None = None,
        num_workers: int = 0,
        columns: dict[str, str] | None = None,
        answer_bos: bool = False,
    ) -> None:
        super().__init__()
        self.answer_bos = answer_bos
        try:
            self.columns = check_columns(columns)
        except ValueError as error:
            raise ConfigError("data.columns", columns, f"map the fields {list(FIELDS)} to your columns") from error
        self.tokenizer_path, self.paths, self.row_format = tokenizer, {"train": train_path, "val": val_path}, row_format
        self.num_thoughts, self.markers, self.target = num_thoughts, markers or ThoughtMarkers(), target
        self.max_length, self.batch_size = max_length, batch_size
        self.eval_batch_size, self.num_workers = eval_batch_size or batch_size, num_workers
        self.tokenizer = None
        self.rows: dict[str, list[dict]] = {}
        self.dropped: dict[str, int] = {}
        self.reports: dict[str, ReadReport] = {}

    def examples(self, split: str) -> list[ReasoningExample]:
        """The examples of the split's file; its report is logged, and a file with none is a ValueError."""
        path = self.paths[split]
        if path is None:
            raise ValueError(f"no {split}_path given")
        examples, self.reports[split] = read_examples(path, self.row_format, self.columns)
        line = self.reports[split].describe(split)
        if not examples:
            raise ValueError(f"no usable examples in the {split} data: {line}. {LAYOUT_HINT}")
        rank_zero_info(line)
        return examples

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
        marker_ids = self.markers.ids(self.tokenizer, self.num_thoughts)
        for split in ("train", "val") if stage in (None, "fit") else ("val",):
            if split in self.rows:
                continue
            encoded = [encode(e, self.tokenizer, marker_ids, self.markers.answer_prefix, self.target, self.answer_bos)
                       for e in self.examples(split)]
            fits = [max(len(row["input_ids"]), len(row["gen_steps_ids"])) <= self.max_length for row in encoded]
            self.rows[split] = [row for row, fit in zip(encoded, fits, strict=True) if fit]
            self.dropped[split] = len(encoded) - len(self.rows[split])
            if self.dropped[split]:
                log.warning("%s: dropped %d examples over %d tokens", split, self.dropped[split], self.max_length)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        if not self.rows[split]:
            raise ValueError(f"no usable examples in the {split} data: all {self.dropped[split]} are over "
                             f"max_length={self.max_length} tokens; raise max_length")
        return DataLoader(self.rows[split], batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=partial(collate, pad_id=self.tokenizer.pad_token_id))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)


class ModularArithmeticData(ReasoningDataModule):
    """The built-in task (:mod:`lit_align.thinker.task`): ``prepare_data`` pre-trains the base into
    ``<workdir>/base`` (cached by its settings), so the module can load ``path: <workdir>/base``.

    Args:
        workdir: where the base is built.
        task: the task and base settings.
        num_train, num_val: examples drawn for training and for held-out evaluation (questions not in training).
        data_seed: seed of the drawn examples.
        num_thoughts, batch_size, eval_batch_size, answer_bos: as :class:`ReasoningDataModule`.
    """

    def __init__(
        self,
        workdir: str = "runs/lta_task",
        task: ArithmeticSettings | None = None,
        num_train: PositiveInt = 1500,
        num_val: PositiveInt = 500,
        data_seed: int = 1,
        num_thoughts: PositiveInt = 2,
        batch_size: PositiveInt = 64,
        eval_batch_size: PositiveInt | None = 250,
        answer_bos: bool = False,
    ) -> None:
        self.base_dir = Path(workdir) / "base"
        super().__init__(tokenizer=str(self.base_dir), num_thoughts=num_thoughts, target="answer", max_length=64,
                         batch_size=batch_size, eval_batch_size=eval_batch_size, answer_bos=answer_bos)
        self.task = task or ArithmeticSettings()
        self.counts, self.data_seed = {"train": num_train, "val": num_val}, data_seed

    def prepare_data(self) -> None:
        pretrain_base(self.base_dir, self.task, self.num_thoughts, self.markers)

    def examples(self, split: str) -> list[ReasoningExample]:
        """Training examples, or held-out ones: questions not among the training examples."""
        train = make_examples(self.counts["train"], self.task, 2 * self.data_seed)
        if split == "train":
            return train
        seen = {example.question for example in train}
        fresh = make_examples(4 * self.counts["val"], self.task, 2 * self.data_seed + 1)
        return [example for example in fresh if example.question not in seen][: self.counts["val"]]
