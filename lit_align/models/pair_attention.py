"""Attention pair by pair in the packed layout: its cost grows with the pairs, ``Σ ℓ²``, not with the rows, ``R·L²``.

In a packed row a token attends only within its own pair (:mod:`lit_align.models.layout`), but a dense attention
over the row computes every block between two pairs and then masks it out: a row of ``n`` equal pairs does ``n``
times the work its pairs need (and SDPA's CPU kernel, given a mask, skips nothing, not even the causal half). Here
a packed forward's attention runs as one SDPA call per pair, on the pair's own span of the row's queries, keys and
values with the pair's own ``ℓ × ℓ`` mask (:func:`pair_rows`), and the outputs are laid back into the rows (zeros on
the rows' end padding, which nothing reads). The rows' lengths then no longer matter to attention.

It is a transformers attention backend, registered under :data:`BY_PAIR`:
:func:`~lit_align.models.layout.attend_by_pair` switches an SDPA model to it. A forward without ``pair_spans``
(generation, the padded layout, ``check_output_head``) runs SDPA itself, with SDPA's own masks, so the model behaves
as before everywhere else; the saved config does not record it.
Not applied to compiled layers (a Python loop over each batch's spans would recompile for every batch), to eager
attention (each family has its own eager function: Gemma-2's soft-caps its scores) nor to FlexAttention, whose
block mask already skips the blocks between pairs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

BY_PAIR = "lit_align_sdpa_by_pair"
"""The name of SDPA run pair by pair among transformers' attention backends."""

Spans = list[tuple[int, int, int]]
"""Each pair's ``(row, start, length)`` in the packed rows, in the batch's pair order."""


def sdpa_by_pair(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                 pair_spans: Spans | None = None, **kwargs: Any) -> tuple[Tensor, None]:
    """transformers' SDPA attention, one call per pair when the forward carries ``pair_spans`` (then
    ``attention_mask`` is :func:`pair_rows`' ``(P, 1, ℓ_max, ℓ_max)`` mask). Returns ``(R, L, heads, head_dim)``."""
    if pair_spans is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    rows, _, width, _ = query.shape
    pieces: list[list[tuple[int, Tensor]]] = [[] for _ in range(rows)]
    for index, (row, start, length) in enumerate(pair_spans):
        span = (slice(row, row + 1), slice(None), slice(start, start + length))
        output, _ = sdpa_attention_forward(module, query[span], key[span], value[span],
                                           attention_mask[index : index + 1, :, :length, :length], **kwargs)
        pieces[row].append((start, output))
    return torch.cat([_fill_row(row_pieces, width) for row_pieces in pieces]), None


def _fill_row(pieces: list[tuple[int, Tensor]], width: int) -> Tensor:
    """One row from its pairs' ``(start, output)``: the outputs in the row's order, zeros where no pair is (the
    row's end padding)."""
    first = pieces[0][1]
    parts, end = [], 0
    for start, output in sorted(pieces, key=lambda piece: piece[0]):
        parts += [first.new_zeros(1, start - end, *first.shape[2:]), output]
        end = start + output.shape[1]
    return torch.cat([*parts, first.new_zeros(1, width - end, *first.shape[2:])], dim=1)


AttentionInterface.register(BY_PAIR, sdpa_by_pair)
AttentionMaskInterface.register(BY_PAIR, sdpa_mask)


def pair_spans(packed: dict[str, Tensor]) -> Spans:
    """The packed rows' ``pair_spans`` as the attention reads them."""
    return [tuple(span) for span in packed["pair_spans"].tolist()]


def pair_rows(packed: dict[str, Tensor]) -> dict[str, Tensor]:
    """The packed rows re-laid one pair per row, right-padded to the longest pair: ``pair_index``, ``part`` and
    ``position_ids`` of shape ``(P, ℓ_max)``, so that :func:`~lit_align.models.layout.pair_mask` of it is each pair's
    own mask."""
    spans = packed["pair_spans"]
    rows, width = packed["pair_index"].shape
    offsets = torch.arange(int(spans[:, 2].max()), device=spans.device)
    inside = offsets[None, :] < spans[:, 2:3]
    flat = (spans[:, :1] * width + spans[:, 1:2] + offsets[None, :]).clamp(max=rows * width - 1)
    return {"pair_index": packed["pair_index"].flatten()[flat].where(inside, -1),
            "part": packed["part"].flatten()[flat], "position_ids": packed["position_ids"].flatten()[flat]}
