"""Reasoning examples → token ids of the base prompt, the generator prompts and the loss positions.

For a question ``q``, gold steps ``s_1..s_S`` and answer ``a`` (``⟨x⟩`` are marker tokens, ``N`` thoughts):

    base        q ⟨bot⟩ ⟨think⟩×N ⟨eot⟩ | target ⟨eos⟩        target: "#### a" or "s_1 … s_S #### a"
    generator   q ⟨end⟩ ⟨t0⟩…⟨tN-1⟩                              (question only: what it sees at test time)
    gen+steps   q ⟨end⟩ s_1 ⟨end⟩ … s_S ⟨end⟩ ⟨t0⟩…⟨tN-1⟩         (the authors' training prompt: gold steps in it)

The thought slots of the base are the ``⟨think⟩`` positions; the anchor is the ``⟨end⟩`` after the question; the
step vectors are read at each step's ``⟨end⟩`` of ``gen+steps``. No chat template: markers are single tokens of
the base's tokenizer (e.g. Llama-3's ``<|reserved_special_token_k|>``, as the authors use).

``answer_ids`` (whose mean base embedding ``ē`` picks the positive step of ``L_focus``) are the answer's own
tokens; the authors' ``assistant_tokenizer(ans_str)`` adds the tokenizer's special tokens (Llama-3: BOS), so their
``ē`` averages the BOS embedding in: ``answer_bos=True`` reproduces that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

Target = Literal["answer", "steps_and_answer"]


@dataclass(frozen=True)
class ReasoningExample:
    question: str
    steps: tuple[str, ...]
    answer: str


@dataclass
class ThoughtMarkers:
    """Marker tokens; each must be one token of the tokenizer."""

    placeholder: str = "<think>"
    """The base's thought slots (repeated N times)."""
    begin: str = "<bot>"
    finish: str = "<eot>"
    step_end: str = "<end>"
    """Ends the question and each gold step in the generator prompts (anchor and step positions)."""
    query: str = "<t{i}>"
    """Format of the N distinct thought-query tokens of the generator (``{i}`` = 0..N-1)."""
    answer_prefix: str = "####"

    def ids(self, tokenizer: PreTrainedTokenizerBase, num_thoughts: int) -> dict[str, Any]:
        names = {"placeholder": self.placeholder, "begin": self.begin, "finish": self.finish,
                 "step_end": self.step_end}
        ids = {key: _single_id(tokenizer, token) for key, token in names.items()}
        ids["queries"] = [_single_id(tokenizer, self.query.format(i=i)) for i in range(num_thoughts)]
        if len({*ids["queries"], ids["placeholder"], ids["step_end"]}) != num_thoughts + 2:
            raise ValueError("thought markers must be distinct tokens")
        return ids


def _single_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    ids = tokenizer.convert_tokens_to_ids([token])
    if ids[0] is None or ids[0] == tokenizer.unk_token_id:
        raise ValueError(f"marker {token!r} is not a token of the tokenizer; add it or pick a reserved token")
    return ids[0]


def encode(
    example: ReasoningExample, tokenizer: PreTrainedTokenizerBase, marker_ids: dict[str, Any],
    answer_prefix: str = "####", target: Target = "answer", answer_bos: bool = False,
) -> dict[str, Any]:
    """The ids and positions of one example (see the module docstring); ``answer_bos`` tokenises ``answer_ids``
    with the tokenizer's special tokens, as the authors do."""
    question = tokenizer(example.question, add_special_tokens=True)["input_ids"]
    steps = [tokenizer(step, add_special_tokens=False)["input_ids"] for step in example.steps]
    text = f"{answer_prefix} {example.answer}"
    if target == "steps_and_answer":
        text = " ".join([*example.steps, text])
    answer_ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    queries, n = marker_ids["queries"], len(marker_ids["queries"])
    prompt = question + [marker_ids["begin"]] + [marker_ids["placeholder"]] * n + [marker_ids["finish"]]
    gen_steps, step_ends = question + [marker_ids["step_end"]], []
    for step in steps:
        gen_steps += step + [marker_ids["step_end"]]
        step_ends.append(len(gen_steps) - 1)
    gen = question + [marker_ids["step_end"]] + queries
    return {
        "input_ids": prompt + answer_ids,
        "labels": [-100] * len(prompt) + answer_ids,
        "prompt_length": len(prompt),
        "thought_slots": list(range(len(question) + 1, len(question) + 1 + n)),
        "gen_ids": gen,
        "gen_slots": list(range(len(gen) - n, len(gen))),
        "gen_steps_ids": gen_steps + queries,
        "gen_steps_slots": list(range(len(gen_steps), len(gen_steps) + n)),
        "q_end": len(question),
        "step_ends": step_ends,
        "answer_ids": tokenizer(example.answer, add_special_tokens=answer_bos)["input_ids"],
        "answer": example.answer,
    }


def collate(rows: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-padded training tensors, plus the prompts left-padded for generation (``prompt_*``)."""
    batch: dict[str, Any] = {"answer": [row["answer"] for row in rows]}
    masks = {"input_ids": "attention_mask", "gen_ids": "gen_mask", "gen_steps_ids": "gen_steps_mask",
             "step_ends": "step_mask", "answer_ids": "answer_mask"}
    for key, mask_key in masks.items():
        batch[key], batch[mask_key] = _pad([row[key] for row in rows], 0 if key == "step_ends" else pad_id)
    batch["labels"] = _pad([row["labels"] for row in rows], -100)[0]
    batch["step_mask"] = batch["step_mask"].bool()
    for key in ("thought_slots", "gen_slots", "gen_steps_slots"):
        batch[key] = torch.tensor([row[key] for row in rows])
    batch["q_end"] = torch.tensor([row["q_end"] for row in rows])
    prompts = [row["input_ids"][: row["prompt_length"]] for row in rows]
    width = max(map(len, prompts))
    shifts = torch.tensor([width - len(prompt) for prompt in prompts])
    batch["prompt_ids"] = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    batch["prompt_mask"] = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    batch["prompt_slots"] = batch["thought_slots"] + shifts[:, None]
    return batch


def _pad(sequences: list[list[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(map(len, sequences)))
    values = torch.tensor([list(s) + [fill] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    return values, mask
