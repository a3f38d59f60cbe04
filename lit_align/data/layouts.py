"""Row layouts of preference data, each turned into ``(prompt, chosen, rejected)``.

The layouts people publish, read as they are (``auto`` picks one per row from its fields):

- ``explicit``: ``prompt``, ``chosen`` and ``rejected`` strings (TRL "standard", explicit prompt).
- ``implicit``: ``chosen`` and ``rejected`` full texts that share the prompt (TRL "standard", implicit prompt);
  the prompt is their longest common prefix, cut where both tokenisations agree (:mod:`tokenize` does the cut).
- ``conversational``: lists of ``{"role", "content"}`` messages, rendered with the chat template (:mod:`chat`).
  ``prompt`` holds the conversation so far and ``chosen``/``rejected`` the assistant's answer; without a
  ``prompt``, the two conversations' common leading messages are the prompt. A ``prompt`` string with full
  ``chosen``/``rejected`` conversations that repeat the user turn (UltraFeedback-binarized) is read the same way:
  the conversations carry the prompt; a ``prompt`` string with answer-only lists is the user's turn.
- ``hh``: Anthropic HH-RLHF transcripts, ``chosen``/``rejected`` whole dialogues that share everything up to
  the last ``"\\n\\nAssistant:"``, which ends the prompt.

A row that cannot be used raises :class:`BadRow` with a short reason; the data module counts reasons
and reports them.
"""

from __future__ import annotations

from typing import Any, Literal

Layout = Literal["auto", "explicit", "implicit", "conversational", "hh"]
RowFormat = Layout  # the name the argument had before implicit prompts were read
HH_ASSISTANT = "\n\nAssistant:"
HH_HUMAN = "\n\nHuman:"
Messages = list[dict[str, str]]


class BadRow(ValueError):
    """A row that is skipped; ``reason`` is the short key under which it is counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def detect_layout(row: dict[str, Any]) -> Layout:
    """Guess a row's layout from its fields: message lists are conversational; without a prompt, texts are HH
    transcripts (marked by ``"\n\nAssistant:"``) or, when there is no ``prompt`` field at all (a field that is
    null in one row of a file is still a field), implicit-prompt texts."""
    if isinstance(row.get("chosen"), list) or isinstance(row.get("prompt"), list):
        return "conversational"
    if row.get("prompt") is None and isinstance(row.get("chosen"), str):
        if HH_ASSISTANT in row["chosen"]:
            return "hh"
        if "prompt" not in row:
            return "implicit"
    return "explicit"


detect_format = detect_layout  # the name it had before layouts were named so


def text_field(row: dict[str, Any], key: str) -> str:
    if key not in row:
        raise BadRow(f"missing_field:{key}")
    value = row[key]
    if not isinstance(value, str):
        raise BadRow(f"not_a_string:{key}")
    return value


def split_text(row: dict[str, Any], layout: Layout) -> tuple[str, str, str]:
    """``(prompt, chosen_response, rejected_response)`` of an ``explicit`` or ``hh`` row, checked."""
    if layout == "hh":
        prompt, chosen, rejected = _split_hh(row)
    else:
        prompt, chosen, rejected = (text_field(row, key) for key in ("prompt", "chosen", "rejected"))
    return check_texts(prompt, chosen, rejected)


def check_texts(prompt: str, chosen: str, rejected: str) -> tuple[str, str, str]:
    """The texts unchanged, or :class:`BadRow` for an empty part or two equal responses."""
    if not prompt.strip():
        raise BadRow("empty_prompt")
    if not chosen.strip() or not rejected.strip():
        raise BadRow("empty_response")
    if chosen == rejected:
        raise BadRow("chosen_equals_rejected")
    return prompt, chosen, rejected


def _split_hh(row: dict[str, Any]) -> tuple[str, str, str]:
    chosen, rejected = text_field(row, "chosen"), text_field(row, "rejected")
    cut_chosen, cut_rejected = chosen.rfind(HH_ASSISTANT), rejected.rfind(HH_ASSISTANT)
    if cut_chosen < 0 or cut_rejected < 0:
        raise BadRow("hh_no_assistant_turn")
    end_chosen, end_rejected = cut_chosen + len(HH_ASSISTANT), cut_rejected + len(HH_ASSISTANT)
    if chosen[:end_chosen] != rejected[:end_rejected]:
        raise BadRow("hh_prompts_differ")
    return chosen[:end_chosen], chosen[end_chosen:], rejected[end_rejected:]


def messages_field(row: dict[str, Any], key: str) -> Messages:
    if key not in row:
        raise BadRow(f"missing_field:{key}")
    messages = row[key]
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise BadRow(f"bad_messages:{key}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def split_conversation(row: dict[str, Any]) -> tuple[Messages, Messages, Messages]:
    """``(prompt, chosen, rejected)`` message lists of a conversational row (see the module docstring)."""
    chosen, rejected = messages_field(row, "chosen"), messages_field(row, "rejected")
    prompt = row.get("prompt")
    if isinstance(prompt, str) and not _repeats_the_prompt(chosen, rejected):
        prompt = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        prompt = messages_field(row, "prompt")
    elif prompt is not None and not isinstance(prompt, str):
        raise BadRow("bad_messages:prompt")
    else:  # no prompt, or a prompt string that the conversations repeat: their shared leading messages
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    if not any(m["role"] == "assistant" for m in chosen) or not any(m["role"] == "assistant" for m in rejected):
        raise BadRow("no_assistant_turn")
    if not prompt:
        raise BadRow("empty_prompt")
    if not all(any(m["content"].strip() for m in answer if m["role"] == "assistant") for answer in (chosen, rejected)):
        raise BadRow("empty_response")
    if chosen == rejected:
        raise BadRow("chosen_equals_rejected")
    return prompt, chosen, rejected


def _repeats_the_prompt(chosen: Messages, rejected: Messages) -> bool:
    """Whether both conversations start before the answer (UltraFeedback-binarized repeats the user turn)."""
    return all(answer and answer[0]["role"] != "assistant" for answer in (chosen, rejected))
