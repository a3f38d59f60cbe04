"""Batches of tokenised pairs: chosen rows stacked above rejected rows for a single policy forward."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lit_align.data.packing import PROMPT, pack_pairs


class PairCollator:
    """Pads every sequence of a batch to the batch's longest (right padding).

    Returns ``input_ids`` and ``attention_mask`` of shape ``(2B, T)`` — rows ``[0:B]`` are the chosen
    sequences (prompt + response), rows ``[B:2B]`` the rejected —, ``response_mask`` ``(2B, T)`` true on
    response tokens, and ``example_key`` ``(B,)``. With ``pack`` (the default) the batch also carries, under
    ``packed``, the same pairs laid out prompt-shared and padding-free (:func:`~lit_align.data.packing.pack_pairs`),
    which the module uses where the model allows it; ``row_tokens`` shares them out between rows of about that
    many tokens. ``layout`` builds one layout alone once the module has decided which it runs (``packed``:
    ``example_key`` and ``packed`` only; ``padded``: no ``packed``); ``None`` builds both.
    """

    def __init__(self, pad_token_id: int, pack: bool = True, row_tokens: int | None = None,
                 layout: Literal["padded", "packed"] | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.pack = pack and layout != "padded"
        self.row_tokens = row_tokens
        self.layout = layout

    def __call__(self, pairs: list[dict[str, Any]]) -> dict[str, Tensor]:
        if self.layout == "packed":
            return {"example_key": torch.tensor([p["example_key"] for p in pairs], dtype=torch.long),
                    "packed": pack_pairs(pairs, self.pad_token_id, self.row_tokens)}
        sequences = [(p["prompt_ids"], p["chosen_ids"]) for p in pairs]
        sequences += [(p["prompt_ids"], p["rejected_ids"]) for p in pairs]
        width = max(len(prompt) + len(response) for prompt, response in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        response_mask = torch.zeros((len(sequences), width), dtype=torch.bool)
        for row, (prompt, response) in enumerate(sequences):
            end = len(prompt) + len(response)
            input_ids[row, :end] = torch.tensor(prompt + response, dtype=torch.long)
            attention_mask[row, :end] = 1
            response_mask[row, len(prompt) : end] = True
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_mask": response_mask,
            "example_key": torch.tensor([p["example_key"] for p in pairs], dtype=torch.long),
        }
        if self.pack:
            batch["packed"] = pack_pairs(pairs, self.pad_token_id, self.row_tokens)
        return batch


def sequence_tokens(batch: dict[str, Any]) -> Tensor:
    """The tokens of a batch's ``2B`` sequences (prompt + chosen, prompt + rejected), as the padded layout counts
    them, from a batch in either layout (a packed row holds each prompt once)."""
    if "attention_mask" in batch:
        return batch["attention_mask"].sum()
    packed = batch["packed"]
    real = packed["pair_index"] >= 0
    return real.sum() + ((packed["part"] == PROMPT) & real).sum()
