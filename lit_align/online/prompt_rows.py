"""Prompts for on-policy sampling, read from any row layout :class:`~lit_align.data.PreferenceDataModule` reads.

A row gives its prompt as the pair's prompt would be (:mod:`lit_align.data.layouts`), and any responses it holds are
ignored:

- ``explicit`` (a ``prompt`` string, with or without ``chosen``/``rejected``): the text, tokenised as a text pair's
  prompt is (with the tokenizer's special tokens, BOS);
- ``conversational``: a ``prompt`` list of messages, or a conversation (``messages``, or the ``chosen`` one) cut
  before its last assistant turn, rendered with the chat template and its generation prompt (after
  ``system_prompt`` when given);
- ``hh``: the transcript up to and including its last ``"\\n\\nAssistant:"``.

Each prompt also keeps the text the reward function reads (:mod:`lit_align.online.reward`): the user's text, i.e.
the prompt string, the last user message of a conversation, or the HH transcript so far. An over-long prompt is cut
inside its frame as a pair's prompt is (:func:`~lit_align.data.tokenize.cut_inside_frame`), or dropped
(``truncation_mode: drop``); a row that gives no prompt is counted by reason and skipped, never silently lost.
"""

from __future__ import annotations

from typing import Any

from lit_align.data.chat import ChatRenderer
from lit_align.data.layouts import HH_ASSISTANT, HH_HUMAN, BadRow, Layout, Messages, detect_layout, messages_field
from lit_align.data.tokenize import OK, LengthSettings, batch_rows, cut_inside_frame, example_key

PROMPT_COLUMNS = ("prompt_ids", "prompt_text", "example_key", "status", "notes", "layout")
KEPT_COLUMNS = ["prompt_ids", "prompt_text", "example_key"]


def prompt_layout(row: dict[str, Any], row_format: Layout) -> Layout:
    """The row's layout: ``row_format``, or detected as the pairs' layout is (a ``messages`` list is a
    conversation)."""
    if row_format != "auto":
        return row_format
    return "conversational" if isinstance(row.get("messages"), list) else detect_layout(row)


def conversation_prompt(row: dict[str, Any]) -> Messages:
    """The messages before the answer: ``prompt`` (a list, or a string made the user's turn), else ``messages`` or
    ``chosen`` cut before their last assistant turn."""
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    elif prompt is not None:
        messages = messages_field(row, "prompt")
    else:
        messages = messages_field(row, "messages" if "messages" in row else "chosen")
        answers = [i for i, message in enumerate(messages) if message["role"] == "assistant"]
        messages = messages[: answers[-1]] if answers else messages
    if not messages or messages[-1]["role"] == "assistant":
        raise BadRow("empty_prompt" if not messages else "prompt_ends_with_answer")
    return messages


def reward_text(messages: Messages) -> str:
    """What the reward function reads as a conversation's prompt: its last user message (else its last message)."""
    users = [message["content"] for message in messages if message["role"] == "user"]
    return users[-1] if users else messages[-1]["content"]


class PromptTokenizer:
    """A batched ``datasets.map`` function: raw rows -> ``prompt_ids``, ``prompt_text`` (what the reward reads),
    ``example_key`` (of the prompt's ids), and ``status``, ``notes`` and ``layout`` as
    :class:`~lit_align.data.tokenize.PairTokenizer` reports them (:func:`~lit_align.data.report.tally`).

    Args:
        tokenizer: a transformers tokenizer (its chat template renders conversations).
        row_format: the rows' layout, or ``auto`` to detect it row by row.
        lengths: ``max_prompt_length`` and ``truncation_mode`` apply; the response's length is the sampler's.
        system_prompt: a system message for conversations that have none.
    """

    def __init__(self, tokenizer, row_format: Layout, lengths: LengthSettings, system_prompt: str | None = None
                 ) -> None:
        self.tokenizer = tokenizer
        self.row_format = row_format
        self.lengths = lengths
        self.chat = ChatRenderer(tokenizer, system_prompt)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        rows = batch_rows(batch)
        columns: dict[str, list[Any]] = {key: [] for key in PROMPT_COLUMNS}
        for row in rows:
            layout = prompt_layout(row, self.row_format)
            try:
                ids, text, notes = self._prompt(row, layout)
                values = (ids, text, example_key(ids, [], []), OK, notes, layout)
            except BadRow as bad:
                values = ([], "", 0, bad.reason, [], layout)
            for key, value in zip(PROMPT_COLUMNS, values, strict=True):
                columns[key].append(value)
        return columns

    def _prompt(self, row: dict[str, Any], layout: Layout) -> tuple[list[int], str, list[str]]:
        """The prompt's ids (truncated), the reward's prompt text and notes, or :class:`BadRow`."""
        if layout == "conversational":
            messages = conversation_prompt(row)
            text, special, frame = self._render(messages), False, self.chat.frame(messages)
            reward = reward_text(messages)
        elif layout == "hh":
            transcript = row.get("chosen") if isinstance(row.get("chosen"), str) else row.get("prompt")
            if not isinstance(transcript, str) or HH_ASSISTANT not in transcript:
                raise BadRow("hh_no_assistant_turn")
            text = reward = transcript[: transcript.rfind(HH_ASSISTANT) + len(HH_ASSISTANT)]
            special, frame = True, HH_HUMAN + HH_ASSISTANT
        elif layout == "explicit":
            text = row.get("prompt")
            if not isinstance(text, str):
                raise BadRow("missing_field:prompt" if text is None else "not_a_string:prompt")
            reward, special, frame = text, True, ""
        else:  # implicit: two full texts and no marked prompt
            raise BadRow("no_prompt_in_implicit_row")
        if not reward.strip():
            raise BadRow("empty_prompt")
        ids, notes = self._truncate(self.tokenizer(text, add_special_tokens=special)["input_ids"], frame, special)
        return ids, reward, notes

    def _truncate(self, ids: list[int], frame: str, special: bool) -> tuple[list[int], list[str]]:
        keep, mode = self.lengths.max_prompt_length, self.lengths.truncation_mode
        if len(ids) <= keep:
            return ids, []
        if mode == "drop":
            raise BadRow("prompt_too_long")
        frame_ids = self.tokenizer(frame, add_special_tokens=special)["input_ids"]
        ids, framed = cut_inside_frame(ids, frame_ids, keep, mode)
        return ids, ["prompt_truncated", "prompt_frame_kept"] if framed else ["prompt_truncated"]

    def _render(self, messages: Messages) -> str:
        """The conversation with the generation prompt, through the chat template (a failing template skips the
        row, counted)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"conversational prompts need a chat template and the tokenizer "
                             f"{self.tokenizer.name_or_path!r} has none; give the data module chat_template")
        system = self.chat.system_prompt
        if system is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as error:  # a template's own raise_exception, or any failure inside it
            raise BadRow(f"chat_template_error({str(error).splitlines()[0][:80] if str(error) else ''})") from error
