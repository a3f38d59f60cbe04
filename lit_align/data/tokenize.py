"""Tokenisation of preference pairs: prompt ids, response ids (EOS appended), truncation, an example key.

Responses are cut from the tokenisation of ``prompt + response`` so that tokens merging across the boundary
are the model's own; when the tokenised prompt is not a prefix of the tokenised whole (a chat template or a
merge across the boundary), the response is tokenised on its own and the row is counted as
``prompt_not_prefix``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lit_align.data.formats import BadRow, RowFormat, detect_format, split_row

TruncationMode = Literal["keep_end", "keep_start", "drop"]
"""What happens to an over-long pair: ``keep_end`` keeps the end of the prompt and the start of the
responses; ``keep_start`` keeps the start of both; ``drop`` skips the pair (counted)."""

OK = "ok"


@dataclass(frozen=True)
class LengthSettings:
    max_length: int = 512
    """Longest prompt + response, in tokens."""
    max_prompt_length: int = 256
    """Longest prompt, in tokens."""
    truncation_mode: TruncationMode = "keep_end"

    def __post_init__(self) -> None:
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(
                f"need 0 < max_prompt_length < max_length, got max_prompt_length={self.max_prompt_length}, "
                f"max_length={self.max_length}"
            )


def example_key(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int]) -> int:
    """A stable signed 64-bit key of a tokenised pair (the offline reference store is keyed by it)."""
    digest = hashlib.blake2b(digest_size=8)
    for ids in (prompt_ids, chosen_ids, rejected_ids):
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(b"|")
    return int.from_bytes(digest.digest(), "little", signed=True)


class PairTokenizer:
    """A batched ``datasets.map`` function: raw rows -> tokenised pairs plus a ``status`` and ``notes``.

    Rows are never dropped here: a bad row gets its skip reason in ``status`` and is counted and filtered
    by the data module, so nothing disappears unreported. ``notes`` lists what was done to a kept row
    (``prompt_truncated``, ``response_truncated``, ``prompt_not_prefix``).
    """

    def __init__(self, tokenizer, row_format: RowFormat, lengths: LengthSettings) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token before training")
        self.tokenizer = tokenizer
        self.row_format = row_format
        self.lengths = lengths

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        columns: dict[str, list[Any]] = {
            k: [] for k in ("prompt_ids", "chosen_ids", "rejected_ids", "example_key", "status", "notes")
        }
        for row in rows:
            try:
                pair, notes = self._truncate(*self.tokenize_row(row))
                status = OK
            except BadRow as bad:
                pair, notes, status = ([], [], []), [], bad.reason
            prompt_ids, chosen_ids, rejected_ids = pair
            columns["prompt_ids"].append(prompt_ids)
            columns["chosen_ids"].append(chosen_ids)
            columns["rejected_ids"].append(rejected_ids)
            columns["example_key"].append(example_key(*pair) if status == OK else 0)
            columns["status"].append(status)
            columns["notes"].append(notes)
        return columns

    def tokenize_row(self, row: dict[str, Any]) -> tuple[tuple[list[int], list[int], list[int]], list[str]]:
        """The pair's ``(prompt_ids, chosen_ids, rejected_ids)`` before truncation, and notes."""
        row_format = detect_format(row) if self.row_format == "auto" else self.row_format
        prompt, chosen, rejected = split_row(row, row_format, self._chat_template)
        special = row_format != "conversational"
        prompt_ids = self.tokenizer(prompt, add_special_tokens=special)["input_ids"]
        responses = [self._response_ids(prompt, prompt_ids, text, special) for text in (chosen, rejected)]
        notes = [] if all(prefix for _, prefix in responses) else ["prompt_not_prefix"]
        return (prompt_ids, responses[0][0], responses[1][0]), notes

    def _response_ids(self, prompt: str, prompt_ids: list[int], response: str, special: bool):
        full_ids = self.tokenizer(prompt + response, add_special_tokens=special)["input_ids"]
        is_prefix = full_ids[: len(prompt_ids)] == prompt_ids
        ids = full_ids[len(prompt_ids) :] if is_prefix else self.tokenizer(response, add_special_tokens=False)[
            "input_ids"
        ]
        if not ids or ids[-1] != self.tokenizer.eos_token_id:
            ids = ids + [self.tokenizer.eos_token_id]
        return ids, is_prefix

    def _truncate(self, pair: tuple[list[int], list[int], list[int]], notes: list[str]):
        prompt_ids, chosen_ids, rejected_ids = pair
        mode, lengths = self.lengths.truncation_mode, self.lengths
        if len(prompt_ids) > lengths.max_prompt_length:
            if mode == "drop":
                raise BadRow("prompt_too_long")
            keep = lengths.max_prompt_length
            prompt_ids = prompt_ids[-keep:] if mode == "keep_end" else prompt_ids[:keep]
            notes.append("prompt_truncated")
        room = lengths.max_length - len(prompt_ids)
        if max(len(chosen_ids), len(rejected_ids)) > room:
            if mode == "drop":
                raise BadRow("pair_too_long")
            chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
            notes.append("response_truncated")
            if chosen_ids == rejected_ids:
                raise BadRow("identical_after_truncation")
        return (prompt_ids, chosen_ids, rejected_ids), notes

    def _chat_template(self, messages, add_generation_prompt: bool) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                "conversational rows need a tokenizer with a chat template and "
                f"{self.tokenizer.name_or_path!r} has none; set tokenizer.chat_template and save_pretrained "
                "the tokenizer, or convert the data to prompt/chosen/rejected strings"
            )
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
