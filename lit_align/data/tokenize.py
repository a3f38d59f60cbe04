"""Tokenisation of preference pairs: prompt ids, response ids (one end of turn), truncation, an example key.

Responses are cut from the tokenisation of ``prompt + response`` so that tokens merging across the boundary
are the model's own; when the tokenised prompt is not a prefix of the tokenised whole (a chat template or a
merge across the boundary), the response is tokenised on its own and the row is counted as
``prompt_not_prefix``. Implicit-prompt rows are cut where the two full texts' tokenisations stop agreeing.

An over-long prompt keeps its frame: the tokens it shares at its start and end with the same prompt emptied of
its text (:meth:`PairTokenizer._frame_ids`), i.e. BOS, the chat template's first header and the generation prompt
(or HH's ``"\n\nHuman:"`` and ``"\n\nAssistant:"``). Truncation cuts the text between them
(:func:`cut_inside_frame`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from lit_align.data.chat import ChatRenderer, close_text
from lit_align.data.layouts import (
    HH_ASSISTANT,
    HH_HUMAN,
    BadRow,
    Layout,
    Messages,
    check_texts,
    detect_layout,
    split_conversation,
    split_text,
    text_field,
)
from lit_align.errors import ConfigError

TruncationMode = Literal["keep_end", "keep_start", "drop"]
"""What happens to an over-long pair: ``keep_end`` keeps the end of the prompt's text and the start of the
responses; ``keep_start`` keeps the start of both; ``drop`` skips the pair (counted). Both keep modes keep the
prompt's frame (BOS, the template's first header, the generation prompt) and cut the text inside it."""

OK = "ok"
Pair = tuple[list[int], list[int], list[int]]
COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids", "example_key", "status", "notes", "layout")


@dataclass(frozen=True)
class LengthSettings:
    max_length: int = 512
    """Longest prompt + response, in tokens."""
    max_prompt_length: int = 256
    """Longest prompt, in tokens."""
    truncation_mode: TruncationMode = "keep_end"

    def __post_init__(self) -> None:
        if not 0 < self.max_prompt_length < self.max_length:
            raise ConfigError("data.max_prompt_length", self.max_prompt_length,
                              f"need 0 < max_prompt_length < max_length, got max_length={self.max_length}")


def example_key(prompt_ids: list[int], chosen_ids: list[int], rejected_ids: list[int]) -> int:
    """A stable signed 64-bit key of a tokenised pair (the offline reference store is keyed by it)."""
    digest = hashlib.blake2b(digest_size=8)
    for ids in (prompt_ids, chosen_ids, rejected_ids):
        digest.update(np.asarray(ids, dtype=np.int64).tobytes())
        digest.update(b"|")
    return int.from_bytes(digest.digest(), "little", signed=True)


class _Texts(NamedTuple):
    layout: Layout
    texts: tuple[str, ...]
    special: bool
    responses: tuple[str, str] = ("", "")
    frame: str | Messages = ""
    """The prompt's frame: the text left when its conversation text is emptied, or the prompt's messages."""


def cut_inside_frame(ids: list[int], frame_ids: list[int], keep: int, mode: TruncationMode) -> tuple[list[int], int]:
    """``ids`` cut to ``keep`` tokens, keeping the run it shares with ``frame_ids`` at its start (BOS, the first
    header) and then at its end (the generation prompt), and the end (``keep_end``) or the start (``keep_start``) of
    what lies between; returns the cut ids and the frame's length. A frame that leaves no room for any of the text
    between is :class:`BadRow` ``prompt_frame_too_long``."""
    head = _shared_run(ids, frame_ids)
    tail = _shared_run(ids[head:][::-1], frame_ids[head:][::-1])
    room = keep - head - tail
    if room <= 0:
        raise BadRow("prompt_frame_too_long")
    inside = ids[head : len(ids) - tail]
    inside = inside[len(inside) - room :] if mode == "keep_end" else inside[:room]
    return ids[:head] + inside + ids[len(ids) - tail :], head + tail


def _shared_run(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    shared = 0
    while shared < min(len(a), len(b)) and a[shared] == b[shared]:
        shared += 1
    return shared


def batch_rows(batch: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """A batched ``datasets.map`` batch (columns of values) as its rows."""
    return [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]


class PairTokenizer:
    """A batched ``datasets.map`` function: raw rows -> tokenised pairs plus ``status``, ``notes`` and ``layout``.

    Rows are never dropped here: a bad row gets its skip reason in ``status`` and is counted and filtered
    by the data module, so nothing disappears unreported. ``notes`` lists what was done to a kept row
    (``prompt_truncated``, ``response_truncated``, ``prompt_not_prefix``); ``layout`` is what the row was read as.

    Args:
        tokenizer: a transformers tokenizer (its chat template renders conversational rows).
        row_format: the rows' layout, or ``auto`` to detect it row by row.
        lengths: length limits and what happens beyond them.
        system_prompt: a system message for conversations that have none.
    """

    def __init__(
        self, tokenizer, row_format: Layout, lengths: LengthSettings, system_prompt: str | None = None
    ) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token; set tokenizer.eos_token before training")
        self.tokenizer = tokenizer
        self.row_format = row_format
        self.lengths = lengths
        self.chat = ChatRenderer(tokenizer, system_prompt)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        rows = batch_rows(batch)
        layouts = [detect_layout(row) if self.row_format == "auto" else self.row_format for row in rows]
        plans = [self._texts(row, layout) for row, layout in zip(rows, layouts, strict=True)]
        columns: dict[str, list[Any]] = {key: [] for key in COLUMNS}
        for plan, ids, layout in zip(plans, self._encode(plans), layouts, strict=True):
            try:
                if isinstance(plan, BadRow):
                    raise plan
                pair, notes = self._truncate(plan, *self._pair(plan, ids))
                status = OK
            except BadRow as bad:
                pair, notes, status = ([], [], []), [], bad.reason
            values = (*pair, example_key(*pair) if status == OK else 0, status, notes, layout)
            for key, value in zip(COLUMNS, values, strict=True):
                columns[key].append(value)
        return columns

    def _texts(self, row: dict[str, Any], layout: Layout) -> _Texts | BadRow:
        """What to tokenise for a row: the prompt and prompt + each response (implicit rows: the two full
        texts), or why the row is skipped."""
        try:
            if layout == "implicit":
                chosen, rejected = text_field(row, "chosen"), text_field(row, "rejected")
                if chosen == rejected:
                    raise BadRow("chosen_equals_rejected")
                return _Texts(layout, (chosen, rejected), True)
            if layout == "conversational":
                messages = split_conversation(row)
                (prompt, chosen, rejected), frame = self.chat.render(*messages), messages[0]
            else:
                prompt, chosen, rejected = split_text(row, layout)
                frame = HH_HUMAN + HH_ASSISTANT if layout == "hh" else ""
        except BadRow as bad:
            return bad
        special = layout != "conversational"  # a chat template writes its own special tokens
        return _Texts(layout, (prompt, prompt + chosen, prompt + rejected), special, (chosen, rejected), frame)

    def _encode(self, plans: list[_Texts | BadRow]) -> list[list[list[int]]]:
        """Every text of every row, in one tokenizer call per ``add_special_tokens`` setting."""
        encoded: list[list[list[int]]] = [[] for _ in plans]
        for special in (True, False):
            owners = [i for i, plan in enumerate(plans) if isinstance(plan, _Texts) and plan.special == special]
            texts = [text for i in owners for text in plans[i].texts]
            ids = iter(self.tokenizer(texts, add_special_tokens=special)["input_ids"] if texts else [])
            for i in owners:
                encoded[i] = [next(ids) for _ in plans[i].texts]
        return encoded

    def _pair(self, plan: _Texts, ids: list[list[int]]) -> tuple[Pair, list[str]]:
        """The pair's ``(prompt_ids, chosen_ids, rejected_ids)`` before truncation, and notes."""
        if plan.layout == "implicit":
            return self._implicit(*ids), []
        close = self.chat.close if plan.layout == "conversational" else self._close_text
        prompt_ids, responses = ids[0], []
        for full_ids, response in zip(ids[1:], plan.responses, strict=True):
            if full_ids[: len(prompt_ids)] == prompt_ids:
                responses.append((full_ids[len(prompt_ids) :], True))
            else:  # a merge across the boundary: the response is tokenised on its own
                responses.append((self.tokenizer(response, add_special_tokens=False)["input_ids"], False))
        notes = [] if all(prefix for _, prefix in responses) else ["prompt_not_prefix"]
        return (prompt_ids, close(responses[0][0]), close(responses[1][0])), notes

    def _implicit(self, chosen_ids: list[int], rejected_ids: list[int]) -> Pair:
        """Chosen and rejected full texts: the prompt is the longest run of tokens both tokenisations share."""
        shared = _shared_run(chosen_ids, rejected_ids)
        parts = (chosen_ids[:shared], chosen_ids[shared:], rejected_ids[shared:])
        check_texts(*(self.tokenizer.decode(ids, skip_special_tokens=True) for ids in parts))
        return parts[0], self._close_text(parts[1]), self._close_text(parts[2])

    def _close_text(self, ids: list[int]) -> list[int]:
        return close_text(ids, self.tokenizer.eos_token_id)

    def _frame_ids(self, plan: _Texts) -> list[int]:
        """The ids of the prompt's frame (:class:`_Texts`), tokenised as the prompt is."""
        text = self.chat.frame(plan.frame) if plan.layout == "conversational" else plan.frame
        return self.tokenizer(text, add_special_tokens=plan.special)["input_ids"]

    def _truncate(self, plan: _Texts, pair: Pair, notes: list[str]) -> tuple[Pair, list[str]]:
        prompt_ids, chosen_ids, rejected_ids = pair
        mode, lengths = self.lengths.truncation_mode, self.lengths
        if len(prompt_ids) > lengths.max_prompt_length:
            if mode == "drop":
                raise BadRow("prompt_too_long")
            prompt_ids, framed = cut_inside_frame(prompt_ids, self._frame_ids(plan), lengths.max_prompt_length, mode)
            notes.extend(["prompt_truncated", "prompt_frame_kept"] if framed else ["prompt_truncated"])
        room = lengths.max_length - len(prompt_ids)
        if max(len(chosen_ids), len(rejected_ids)) > room:
            if mode == "drop":
                raise BadRow("pair_too_long")
            chosen_ids, rejected_ids = chosen_ids[:room], rejected_ids[:room]
            notes.append("response_truncated")
            if chosen_ids == rejected_ids:
                raise BadRow("identical_after_truncation")
        return (prompt_ids, chosen_ids, rejected_ids), notes
