"""``SequenceClassifierReward``: the reward of a sequence-classification model, ``r(x, y) = f_φ(render(x, y))``.

Any transformers ``AutoModelForSequenceClassification`` checkpoint with one output (a hub reward model, or one
:class:`~lit_align.online.RewardModel` trained and saved) scores ``(prompt, response)`` texts as its own forward
does: rendered with its own tokenizer and chat template, padded with its config's pad id, pooled by the model
(transformers' decoder heads read the last token that is not padding).

Rendering (``template``):

- ``chat``: the conversation ``[user: prompt, assistant: response]`` through the tokenizer's chat template
  (after ``system_prompt`` when one is given), tokenised without added special tokens;
- ``text``: ``prompt + response`` tokenised as a text pair is (with the tokenizer's special tokens, BOS);
- ``auto``: as the model was trained, when a :class:`~lit_align.online.RewardModel` recorded it (its pairs all
  conversations, or all texts); otherwise ``chat`` when the tokenizer has a chat template, else ``text``.

With ``end_of_turn`` (the default) each sequence then ends as lit-align's data pipeline ends a response
(:mod:`lit_align.data.chat`): at the template's end-of-turn token, or with one EOS, so a model trained by
lit-align on the same layout reads its rewards at the token it was trained to read them at.

The model runs frozen (eval mode, no gradient), in batches of sequences of similar length; its weights are read
weights-only (safetensors, or ``torch.load(weights_only=True)``), and model code from the hub runs only with
``trust_remote_code``. Nothing is loaded until the first call (or :meth:`load`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property, partial
from typing import Literal

import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch import Tensor
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lit_align.data.chat import ChatRenderer, close_text
from lit_align.errors import ConfigError
from lit_align.models.policy import DType
from lit_align.online.reward import check_batch
from lit_align.paths import resolve_local_or_hub
from lit_align.validation import require_counts

log = logging.getLogger(__name__)

Template = Literal["auto", "chat", "text"]
TRAINED_TEMPLATE = "lit_align_template"
"""The config field in which a :class:`~lit_align.online.RewardModel` records how its pairs were rendered
(``chat``: conversations through the chat template; ``text``: text layouts), which ``auto`` follows."""


class SequenceClassifierReward:
    """A reward function (:class:`~lit_align.online.RewardFn`) read from a sequence-classification model.

    Args:
        path: a ``save_pretrained`` directory or hub id of an ``AutoModelForSequenceClassification``.
        tokenizer: its tokenizer; unset, the one saved with the model.
        template: how a prompt and a response become one text: ``auto``, ``chat`` or ``text`` (module docstring).
        system_prompt: a system message put first in the conversation (``chat`` only).
        end_of_turn: end each sequence at the end of turn as lit-align trains (module docstring); false scores
            the rendered text as it is.
        label: the output read as the reward; unset, the model must have exactly one (``num_labels: 1``).
        batch_size: sequences per forward pass.
        max_length: longest sequence in tokens; a longer one keeps its last ``max_length`` tokens (the end of the
            response, where the reward is read) and is counted in ``truncated``. Unset: no limit.
        dtype: the weights' dtype.
        device: where the model runs (:meth:`to` moves it).
        trust_remote_code: run model and tokenizer code from the hub (off unless asked for).
    """

    def __init__(
        self,
        path: str,
        tokenizer: str | None = None,
        template: Template = "auto",
        system_prompt: str | None = None,
        end_of_turn: bool = True,
        label: NonNegativeInt | None = None,
        batch_size: PositiveInt = 32,
        max_length: PositiveInt | None = None,
        dtype: DType = "float32",
        device: str = "cpu",
        trust_remote_code: bool = False,
    ) -> None:
        require_counts(**{"reward_fn.batch_size": batch_size, "reward_fn.max_length": max_length})
        if template not in Template.__args__:
            raise ConfigError("reward_fn.template", template, f"one of {Template.__args__}")
        if label is not None and label < 0:
            raise ConfigError("reward_fn.label", label, "an output index >= 0 (or unset for a one-output model)")
        self.path = resolve_local_or_hub("reward_fn.path", path)
        self.tokenizer_path = resolve_local_or_hub("reward_fn.tokenizer", tokenizer) if tokenizer else self.path
        self.template = template
        self.system_prompt = system_prompt
        self.end_of_turn = end_of_turn
        self.label = label
        self.batch_size = batch_size
        self.max_length = max_length
        self.dtype = dtype
        self.device = torch.device(device)
        self.trust_remote_code = trust_remote_code
        self.truncated = 0
        """How many sequences were cut to ``max_length`` so far."""

    @cached_property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return AutoTokenizer.from_pretrained(self.tokenizer_path, trust_remote_code=self.trust_remote_code)

    @cached_property
    def model(self) -> PreTrainedModel:
        """The classifier, frozen, on ``device``, its config's pad id set (the tokenizer's, else EOS)."""
        model = AutoModelForSequenceClassification.from_pretrained(
            self.path, dtype=getattr(torch, self.dtype), trust_remote_code=self.trust_remote_code, weights_only=True)
        outputs = model.config.num_labels
        if self.label is None and outputs != 1:
            raise ConfigError("reward_fn.label", None, f"{self.path} has {outputs} outputs: name the one that is the "
                              "reward (label: <index>)")
        if self.label is not None and self.label >= outputs:
            raise ConfigError("reward_fn.label", self.label, f"{self.path} has {outputs} outputs")
        if model.config.pad_token_id is None:
            pad = self.tokenizer.pad_token_id
            model.config.pad_token_id = self.tokenizer.eos_token_id if pad is None else pad
        if model.config.pad_token_id is None:
            raise ConfigError("reward_fn.tokenizer", self.tokenizer_path, "a tokenizer with a pad or an EOS token "
                              "(the model's config names no pad id)")
        return model.eval().requires_grad_(False).to(self.device)

    def load(self) -> SequenceClassifierReward:
        """Read the tokenizer and the model now (rather than at the first call)."""
        _ = self.tokenizer, self.model
        return self

    def to(self, device: torch.device | str) -> SequenceClassifierReward:
        """Run on ``device`` from now on (the on-policy module moves its reward function to its own device)."""
        self.device = torch.device(device)
        if "model" in self.__dict__:
            self.model.to(self.device)
        return self

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """The reward of each response to its prompt, a float32 tensor on the CPU."""
        check_batch(prompts, responses)
        rows = self.encode(prompts, responses)
        rewards = torch.empty(len(rows), dtype=torch.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))  # similar lengths share a batch
        pad = self.model.config.pad_token_id
        for start in range(0, len(order), self.batch_size):
            chosen = order[start : start + self.batch_size]
            width = max(len(rows[i]) for i in chosen)
            input_ids = torch.full((len(chosen), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(chosen), width), dtype=torch.long)
            for row, i in enumerate(chosen):
                input_ids[row, : len(rows[i])] = torch.tensor(rows[i])
                attention_mask[row, : len(rows[i])] = 1
            output = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device))
            rewards[chosen] = output.logits[:, self.label or 0].float().cpu()
        return rewards

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """The token ids the model scores for each ``(prompt, response)`` (module docstring)."""
        tokenizer = self.tokenizer
        if self._chat():
            system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
            texts = [tokenizer.apply_chat_template([*system, {"role": "user", "content": p},
                                                    {"role": "assistant", "content": r}], tokenize=False)
                     for p, r in zip(prompts, responses, strict=True)]
            ids, close = tokenizer(texts, add_special_tokens=False)["input_ids"], ChatRenderer(tokenizer).close
        else:
            texts = [p + r for p, r in zip(prompts, responses, strict=True)]
            ids, close = tokenizer(texts)["input_ids"], partial(close_text, eos=tokenizer.eos_token_id)
        if self.end_of_turn:
            if tokenizer.eos_token_id is None:
                raise ConfigError("reward_fn.end_of_turn", True, f"an EOS token to end responses with, and the "
                                  f"tokenizer of {self.tokenizer_path} has none: set end_of_turn: false")
            ids = [close(row) for row in ids]
        if self.max_length is not None:
            cut = sum(len(row) > self.max_length for row in ids)
            if cut and not self.truncated:
                log.warning("%s: %d of %d sequences are longer than max_length=%d; each keeps its last %d tokens",
                            self.path, cut, len(ids), self.max_length, self.max_length)
            self.truncated += cut
            ids = [row[-self.max_length :] for row in ids]
        return ids

    def _chat(self) -> bool:
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        template = self.template
        if template == "auto":
            template = getattr(self.model.config, TRAINED_TEMPLATE, None) or ("chat" if has_template else "text")
        if template == "chat" and not has_template:
            raise ConfigError("reward_fn.template", self.template, f"chat rendering, and the tokenizer of "
                              f"{self.tokenizer_path} has no chat template: use template: text, or give a tokenizer "
                              "that has one")
        return template == "chat"

    def __repr__(self) -> str:
        return f"SequenceClassifierReward(path={self.path!r}, template={self.template!r})"
