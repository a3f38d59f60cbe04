"""Row formats of preference data, each turned into ``(prompt, chosen, rejected)`` texts.

Three formats are understood:

- ``explicit``: ``prompt``, ``chosen`` and ``rejected`` strings.
- ``conversational``: lists of ``{"role", "content"}`` messages, rendered with the tokenizer's chat template.
  ``prompt`` holds the conversation so far and ``chosen``/``rejected`` the assistant's answer; without a
  ``prompt``, the two conversations' common leading messages are the prompt.
- ``hh``: Anthropic HH-RLHF transcripts, ``chosen``/``rejected`` whole dialogues that share everything up to
  the last ``"\\n\\nAssistant:"``, which ends the prompt.

A row that cannot be used raises :class:`BadRow` with a short reason; the data module counts reasons
and reports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

RowFormat = Literal["auto", "explicit", "conversational", "hh"]
HH_ASSISTANT = "\n\nAssistant:"


class BadRow(ValueError):
    """A row that is skipped; ``reason`` is the short key under which it is counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def detect_format(row: dict[str, Any]) -> RowFormat:
    """Guess a row's format from its fields."""
    if isinstance(row.get("chosen"), list) or isinstance(row.get("prompt"), list):
        return "conversational"
    if row.get("prompt") is None and isinstance(row.get("chosen"), str) and HH_ASSISTANT in row["chosen"]:
        return "hh"
    return "explicit"


def split_row(row: dict[str, Any], row_format: RowFormat, chat_template: Callable) -> tuple[str, str, str]:
    """``(prompt, chosen_response, rejected_response)`` texts of one row, or :class:`BadRow`.

    ``chat_template(messages, add_generation_prompt)`` renders a list of messages to text; only
    conversational rows call it.
    """
    if row_format == "auto":
        row_format = detect_format(row)
    if row_format == "hh":
        prompt, chosen, rejected = _split_hh(row)
    elif row_format == "conversational":
        prompt, chosen, rejected = _split_conversation(row, chat_template)
    else:
        prompt, chosen, rejected = (_text_field(row, key) for key in ("prompt", "chosen", "rejected"))
    if not prompt.strip():
        raise BadRow("empty_prompt")
    if not chosen.strip() or not rejected.strip():
        raise BadRow("empty_response")
    if chosen == rejected:
        raise BadRow("chosen_equals_rejected")
    return prompt, chosen, rejected


def _text_field(row: dict[str, Any], key: str) -> str:
    if key not in row:
        raise BadRow(f"missing_field:{key}")
    value = row[key]
    if not isinstance(value, str):
        raise BadRow(f"not_a_string:{key}")
    return value


def _split_hh(row: dict[str, Any]) -> tuple[str, str, str]:
    chosen, rejected = _text_field(row, "chosen"), _text_field(row, "rejected")
    cut_chosen, cut_rejected = chosen.rfind(HH_ASSISTANT), rejected.rfind(HH_ASSISTANT)
    if cut_chosen < 0 or cut_rejected < 0:
        raise BadRow("hh_no_assistant_turn")
    end_chosen, end_rejected = cut_chosen + len(HH_ASSISTANT), cut_rejected + len(HH_ASSISTANT)
    if chosen[:end_chosen] != rejected[:end_rejected]:
        raise BadRow("hh_prompts_differ")
    return chosen[:end_chosen], chosen[end_chosen:], rejected[end_rejected:]


def _messages(row: dict[str, Any], key: str) -> list[dict[str, str]]:
    if key not in row:
        raise BadRow(f"missing_field:{key}")
    messages = row[key]
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise BadRow(f"bad_messages:{key}")
    return messages


def _split_conversation(row: dict[str, Any], chat_template) -> tuple[str, str, str]:
    chosen, rejected = _messages(row, "chosen"), _messages(row, "rejected")
    if row.get("prompt") is not None:
        prompt = _messages(row, "prompt")
    else:
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    if not any(m["role"] == "assistant" for m in chosen) or not any(m["role"] == "assistant" for m in rejected):
        raise BadRow("no_assistant_turn")
    prompt_text = chat_template(prompt, add_generation_prompt=True)
    responses = []
    for answer in (chosen, rejected):
        full_text = chat_template(prompt + answer, add_generation_prompt=False)
        if not full_text.startswith(prompt_text):
            raise BadRow("chat_template_prompt_not_prefix")
        responses.append(full_text[len(prompt_text) :])
    return prompt_text, responses[0], responses[1]
