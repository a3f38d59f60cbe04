"""Prompt-shared, padding-free rows: each pair laid out once as ``[prompt | chosen | rejected]``.

A batch's pairs are concatenated into one row, or shared out between a few nearly equal rows (so that attention
over whole rows, whose cost per token grows with the row's length, stays cheap for large batches; only the rows'
ends are padded). Attention by pair (:mod:`lit_align.models.pair_attention`) costs the same on any rows, and runs
them joined into one without padding (:func:`one_row`).
Per token a row carries its position id (rejected tokens continue from the prompt's end, as they would in the
padded layout), the pair it belongs to and its part (prompt, chosen or rejected); :mod:`lit_align.models.layout` turns
these into the attention mask, in which a token sees the earlier tokens of its own pair except that rejected
tokens never see the chosen ones::

    row           p0 p1 p2 c0 c1 r0 r1 | q0 ...
    position ids   0  1  2  3  4  3  4 |  0 ...

Each of the batch's ``2B`` responses (chosen ones first, then rejected, as in the padded layout) also gets a
*response grid* row: indices into the flattened rows of the positions that predict its tokens, then of its
tokens, ``[last prompt token, y_0, …, y_{n-1}]``, right-padded. The first response token is predicted by the last
prompt token, which chosen and rejected share. Gathering the model's states at the grid gives a
``(2B, 1 + n_max, H)`` tensor whose ``response_ids`` and ``response_mask`` read exactly like a padded batch's, so
response log-probs, token-level KL and pooled SAE features are computed by the same code in both layouts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

PROMPT, CHOSEN, REJECTED = 0, 1, 2


def pack_pairs(pairs: list[dict[str, Any]], pad_token_id: int, row_tokens: int | None = None) -> dict[str, Tensor]:
    """The packed rows of ``pairs`` (each with ``prompt_ids``, ``chosen_ids``, ``rejected_ids``).

    Args:
        pairs: the batch's tokenised pairs.
        pad_token_id: the id filling the ends of rows shorter than the longest and of short grid rows.
        row_tokens: about how many tokens a row holds: the pairs are shared out between
            ``ceil(total / row_tokens)`` rows (at most one per pair), longest first onto the emptiest row, so the
            rows come out nearly equal; ``None`` packs every pair into one row, without any padding.

    Returns ``input_ids``, ``position_ids``, ``pair_index`` (``-1`` on padding) and ``part`` of shape ``(R, L)``;
    ``grid`` (indices into the ``R · L`` flattened rows), ``response_ids`` and ``response_mask`` of shape
    ``(2B, W)``; and ``pair_spans``, each pair's ``(row, start, length)``, of shape ``(B, 3)``.
    """
    lengths = [len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs]
    rows = balanced_rows(lengths, row_tokens)
    width = max(sum(lengths[i] for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    pair_index = torch.full((len(rows), width), -1, dtype=torch.long)
    part = torch.full((len(rows), width), PROMPT, dtype=torch.long)
    grids: list[list[int]] = [[] for _ in range(2 * len(pairs))]
    spans = torch.zeros((len(pairs), 3), dtype=torch.long)
    for row, members in enumerate(rows):
        offset = 0
        for index in members:
            prompt, chosen, rejected = (pairs[index][name] for name in ("prompt_ids", "chosen_ids", "rejected_ids"))
            span = slice(offset, offset + lengths[index])
            input_ids[row, span] = torch.tensor(prompt + chosen + rejected, dtype=torch.long)
            position_ids[row, span] = torch.tensor(
                [*range(len(prompt) + len(chosen)), *range(len(prompt), len(prompt) + len(rejected))])
            pair_index[row, span] = index
            spans[index] = torch.tensor([row, offset, lengths[index]])
            part[row, span] = torch.tensor([PROMPT] * len(prompt) + [CHOSEN] * len(chosen)
                                           + [REJECTED] * len(rejected))
            chosen_start = row * width + offset + len(prompt)
            rejected_start = chosen_start + len(chosen)
            predictor = [chosen_start - 1] if prompt else []  # no prompt: no predictor of the first token, as padded
            grids[index] = predictor + list(range(chosen_start, rejected_start))
            grids[len(pairs) + index] = predictor + list(range(rejected_start, rejected_start + len(rejected)))
            offset += lengths[index]
    grid, valid, response_mask = _grid(grids, [len(p["chosen_ids"]) for p in pairs]
                                       + [len(p["rejected_ids"]) for p in pairs])
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "pair_index": pair_index,
        "part": part,
        "grid": grid,
        "response_ids": torch.where(valid, input_ids.flatten()[grid], pad_token_id),
        "response_mask": response_mask,
        "pair_spans": spans,
    }


def one_row(packed: dict[str, Tensor]) -> dict[str, Tensor]:
    """``packed``'s rows joined into one, their end padding dropped, its grid and spans pointing into it: the layout
    for attention by pair (:mod:`lit_align.models.pair_attention`), whose cost does not depend on the rows, so that
    no position is spent on padding."""
    real = (packed["pair_index"] >= 0).flatten()
    if real.all() and len(packed["pair_index"]) == 1:
        return packed
    joined_index = real.cumsum(0) - 1  # where each position of the flattened rows goes (a grid's padding: to 0)
    spans = packed["pair_spans"]
    starts = joined_index[spans[:, 0] * packed["pair_index"].shape[1] + spans[:, 1]]
    rows = {name: packed[name].flatten()[real][None] for name in ("input_ids", "position_ids", "pair_index", "part")}
    return {**packed, **rows, "grid": joined_index[packed["grid"]],
            "pair_spans": torch.stack([torch.zeros_like(starts), starts, spans[:, 2]], dim=1)}


def balanced_rows(lengths: list[int], row_tokens: int | None) -> list[list[int]]:
    """Pair indices per row: ``ceil(total / row_tokens)`` rows (one without ``row_tokens``), filled longest pair
    first onto the row with the fewest tokens; each row keeps its pairs in batch order."""
    count = 1 if row_tokens is None else min(len(lengths), max(1, -(-sum(lengths) // row_tokens)))
    rows: list[list[int]] = [[] for _ in range(count)]
    loads = [0] * count
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        emptiest = min(range(count), key=loads.__getitem__)
        rows[emptiest].append(index)
        loads[emptiest] += lengths[index]
    return [sorted(row) for row in rows]


def _grid(grids: list[list[int]], response_lengths: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """The grid rows right-padded into a tensor, where they hold an index, and where a response token."""
    width = max(len(row) for row in grids)
    grid = torch.zeros((len(grids), width), dtype=torch.long)
    valid = torch.zeros((len(grids), width), dtype=torch.bool)
    response_mask = torch.zeros((len(grids), width), dtype=torch.bool)
    for row, (indices, length) in enumerate(zip(grids, response_lengths, strict=True)):
        grid[row, : len(indices)] = torch.tensor(indices, dtype=torch.long)
        valid[row, : len(indices)] = True
        response_mask[row, len(indices) - length : len(indices)] = True
    return grid, valid, response_mask
