"""Prompt-shared, padding-free rows: each pair laid out once as ``[prompt | chosen | rejected]``.

A batch's pairs are concatenated into one row without padding. Per token the row carries its position id (the
rejected tokens continue from the prompt's end, as they would in the padded layout), the pair it belongs to and
its part (prompt, chosen or rejected); :mod:`lit_align.layout` turns these into the attention mask, in which a
token sees the earlier tokens of its own pair except that rejected tokens never see the chosen ones::

    row   p0 p1 p2 c0 c1 r0 r1 | q0 ...          position ids  0 1 2 3 4 3 4 | 0 ...

Each of the batch's ``2B`` responses (chosen ones first, then rejected, as in the padded layout) also gets a
*response grid* row: indices into the packed row of the positions that predict its tokens, then of its tokens,
``[last prompt token, y_0, …, y_{n-1}]``, right-padded. The first response token is predicted by the last
prompt token, which chosen and rejected share. Gathering the model's states at the grid gives a ``(2B, 1 + n_max,
H)`` tensor whose ``response_ids`` and ``response_mask`` read exactly like a padded batch's, so response log-probs,
token-level KL and pooled SAE features are computed by the same code in both layouts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

PROMPT, CHOSEN, REJECTED = 0, 1, 2


def pack_pairs(pairs: list[dict[str, Any]], pad_token_id: int) -> dict[str, Tensor]:
    """The packed row of ``pairs`` (each with ``prompt_ids``, ``chosen_ids``, ``rejected_ids``).

    Returns ``input_ids``, ``position_ids``, ``pair_index`` and ``part`` of shape ``(1, N)`` (``N`` the total
    number of tokens), and ``grid``, ``response_ids`` and ``response_mask`` of shape ``(2B, W)``.
    """
    ids: list[int] = []
    positions: list[int] = []
    pair_index: list[int] = []
    parts: list[int] = []
    chosen_grid: list[list[int]] = []
    rejected_grid: list[list[int]] = []
    for index, pair in enumerate(pairs):
        prompt, chosen, rejected = pair["prompt_ids"], pair["chosen_ids"], pair["rejected_ids"]
        chosen_start = len(ids) + len(prompt)
        rejected_start = chosen_start + len(chosen)
        predictor = [chosen_start - 1] if prompt else []  # no prompt: the first token has no predictor, as padded
        chosen_grid.append(predictor + list(range(chosen_start, rejected_start)))
        rejected_grid.append(predictor + list(range(rejected_start, rejected_start + len(rejected))))
        ids += prompt + chosen + rejected
        positions += [*range(len(prompt) + len(chosen)), *range(len(prompt), len(prompt) + len(rejected))]
        parts += [PROMPT] * len(prompt) + [CHOSEN] * len(chosen) + [REJECTED] * len(rejected)
        pair_index += [index] * (len(prompt) + len(chosen) + len(rejected))
    rows = chosen_grid + rejected_grid
    responses = [len(p["chosen_ids"]) for p in pairs] + [len(p["rejected_ids"]) for p in pairs]
    width = max(len(row) for row in rows)
    grid = torch.zeros((len(rows), width), dtype=torch.long)
    valid = torch.zeros((len(rows), width), dtype=torch.bool)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for row, (indices, length) in enumerate(zip(rows, responses, strict=True)):
        grid[row, : len(indices)] = torch.tensor(indices, dtype=torch.long)
        valid[row, : len(indices)] = True
        response_mask[row, len(indices) - length : len(indices)] = True
    input_ids = torch.tensor([ids], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "pair_index": torch.tensor([pair_index], dtype=torch.long),
        "part": torch.tensor([parts], dtype=torch.long),
        "grid": grid,
        "response_ids": torch.where(valid, input_ids[0][grid], pad_token_id),
        "response_mask": response_mask,
    }
