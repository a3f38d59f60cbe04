"""Conversations rendered with the tokenizer's chat template, and the end-of-turn rule.

The end of turn (docs/data.md): a response is trained through the token that closes it and no further.

- A chat template that closes the assistant turn itself (ChatML/Qwen ``<|im_end|>``, Llama-3 ``<|eot_id|>``,
  Gemma ``<end_of_turn>``): the response ends with that special token; the whitespace the template writes after
  it (ChatML's and Gemma's ``"\\n"``) belongs to the next turn's layout and is not trained; no EOS is added.
- A template whose turns end in plain text, and every text layout (``explicit``, ``implicit``, ``hh``): the
  response gets the tokenizer's EOS, unless its last token already is EOS.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from lit_align.data.layouts import BadRow, Layout, Messages, detect_layout, split_conversation, split_text

Apply = Callable[..., str]
"""``apply(messages, add_generation_prompt=...)`` renders messages to text."""


def resolve_chat_template(template: str | None) -> str | None:
    """A chat template given as a file path (``.jinja`` or any text file) or as the Jinja string itself."""
    if template is None or "{" in template:
        return template
    path = Path(template)
    if not path.is_file():
        raise ValueError(f"chat_template={template!r} is neither a Jinja string nor a file")
    return path.read_text(encoding="utf-8")


class ChatRenderer:
    """Renders ``(prompt, chosen, rejected)`` message lists to texts; a template that fails on a row (an
    exception raised inside it, e.g. Gemma's "System role not supported") makes the row a counted skip.

    Args:
        tokenizer: its ``chat_template`` renders (set it, or give the data module ``chat_template``).
        system_prompt: a system message put first in every conversation that does not start with one.
    """

    def __init__(self, tokenizer, system_prompt: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt

    def render(self, prompt: Messages, chosen: Messages, rejected: Messages) -> tuple[str, str, str]:
        """The prompt text (with the generation prompt) and each response's text after it."""
        return render_pair(self._with_system(prompt), chosen, rejected, self._apply)

    def frame(self, prompt: Messages) -> str:
        """The prompt rendered with every message's text emptied (the system prompt's too): what the template
        writes around the conversation, e.g. BOS, the first header and the generation prompt. Truncation keeps
        the prompt's tokens that this shares at its start and end."""
        emptied = [{**message, "content": ""} for message in self._with_system(prompt)]
        return self._apply(emptied, add_generation_prompt=True)

    def close(self, ids: list[int]) -> list[int]:
        """A rendered response's ids ended by exactly one end of turn (the rule in the module docstring)."""
        end = len(ids)
        while end and ids[end - 1] not in self.special_ids and not self.tokenizer.decode(ids[end - 1 : end]).strip():
            end -= 1
        if end and ids[end - 1] in self.special_ids:
            return ids[:end]
        return close_text(ids, self.tokenizer.eos_token_id)

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """The tokenizer's special tokens: EOS and the like, and added tokens marked special (end-of-turn ones)."""
        added = getattr(self.tokenizer, "added_tokens_decoder", {})
        return frozenset(self.tokenizer.all_special_ids) | {i for i, token in added.items() if token.special}

    def _with_system(self, prompt: Messages) -> Messages:
        if self.system_prompt is not None and prompt[0]["role"] != "system":
            return [{"role": "system", "content": self.system_prompt}, *prompt]
        return prompt

    def _apply(self, messages: Messages, add_generation_prompt: bool) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                "conversational rows need a chat template and the tokenizer "
                f"{self.tokenizer.name_or_path!r} has none; give the data module chat_template (a Jinja string "
                "or a file), or convert the data to prompt/chosen/rejected strings"
            )
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
        except Exception as error:  # a template's own raise_exception, or any failure inside it, skips the row
            raise BadRow(f"chat_template_error({_short(error)})") from error


def render_pair(prompt: Messages, chosen: Messages, rejected: Messages, apply: Apply) -> tuple[str, str, str]:
    """The prompt text (with the generation prompt) and each response's text after it in the whole conversation."""
    prompt_text = apply(prompt, add_generation_prompt=True)
    responses = []
    for answer in (chosen, rejected):
        full_text = apply(prompt + answer, add_generation_prompt=False)
        if not full_text.startswith(prompt_text):
            raise BadRow("chat_template_prompt_not_prefix")
        responses.append(full_text[len(prompt_text) :])
    return prompt_text, responses[0], responses[1]


def split_row(row: dict[str, Any], layout: Layout, chat_template: Apply) -> tuple[str, str, str]:
    """``(prompt, chosen_response, rejected_response)`` texts of an ``explicit``, ``hh`` or ``conversational`` row
    (rendered with ``chat_template``), or :class:`BadRow`; ``implicit`` rows are cut on tokens by
    :class:`~lit_align.data.tokenize.PairTokenizer`."""
    layout = detect_layout(row) if layout == "auto" else layout
    if layout == "implicit":
        raise ValueError("implicit-prompt rows are split where their tokenisations agree: use PairTokenizer")
    if layout == "conversational":
        return render_pair(*split_conversation(row), chat_template)
    return split_text(row, layout)


def close_text(ids: list[int], eos: int) -> list[int]:
    """A text response's ids ending in exactly one EOS."""
    return ids if ids and ids[-1] == eos else ids + [eos]


def _short(error: Exception) -> str:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return message[:80]
