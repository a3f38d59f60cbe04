"""Per-token response log-probs, left-aligned, and the log collision probabilities, from one chunked LM-head pass.

LD-DPO (Liu et al. 2024, Eq. 12) weighs each response token by where it falls in the pair, so it reads the
per-token log-probs ``log π(y_t|x, y<t)`` of policy and reference; WPO (Zhou et al. 2024, Eq. 3) reads the
policy's ``Σ_t log Σ_v π_θ(v|x, y<t)²`` besides its summed log-probs. Both come out of the pass that sums the
response log-probs (:func:`lit_align.models.logprobs.sequence_logps`): the same positions, chunks and per-token
values, so ``sums`` equals ``sequence_logps`` exactly, in either layout (:mod:`lit_align.models.layout`).

Left-aligned: response token ``t`` (the ``t``-th true entry of ``response_mask[:, 1:]``) sits in column ``t``, zero
after the response's end; the width is the longest response of the batch, so the padded and the packed view of
the same pairs give the same ``(batch, width)`` tensor.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lit_align.models.logprobs import response_positions, token_logps


class ResponseLogps(NamedTuple):
    """Per-row results of :func:`response_logps`."""

    sums: Tensor
    """``Σ_t log π(y_t|x, y<t)``, ``(batch,)`` fp32; differentiable."""
    per_token: Tensor
    """``log π(y_t|x, y<t)`` left-aligned, ``(batch, width)`` fp32; differentiable; rows sum to ``sums``."""
    log_collision: Tensor | None
    """``Σ_t log Σ_v π(v|x, y<t)²``, ``(batch,)`` fp32, no grad; ``None`` unless asked for."""


def _chunk(hidden: Tensor, head: nn.Module, targets: Tensor, collision: bool) -> tuple[Tensor, Tensor]:
    logits = head(hidden)
    logps = token_logps(logits, targets)
    if not collision:
        return logps, logps.new_zeros(0)
    with torch.no_grad():
        log_probs = logits.float().log_softmax(-1)
        return logps, (2 * log_probs).logsumexp(-1)  # log Σ_v π(v)², never Σ π² then log


def response_logps(
    hidden: Tensor,
    head: nn.Module,
    input_ids: Tensor,
    response_mask: Tensor,
    chunk_size: int = 4096,
    collision: bool = False,
) -> ResponseLogps:
    """Summed and left-aligned per-token response log-probs of each row, and with ``collision`` the summed log
    collision probabilities.

    Args:
        hidden: final hidden states (after the model's last norm), ``(batch, time, hidden)``.
        head: the LM head mapping hidden states to vocabulary logits.
        input_ids: ``(batch, time)`` token ids.
        response_mask: ``(batch, time)`` bool, true on response tokens.
        chunk_size: response positions per LM-head call (checkpointed when there are several, with gradients).
        collision: also compute ``Σ_t log Σ_v π(v|x, y<t)²`` (WPO's normaliser).
    """
    rows, positions = response_positions(response_mask)
    selected, targets = hidden[rows, positions], input_ids[rows, positions + 1]
    starts = range(0, len(targets), chunk_size)
    recompute = len(starts) > 1 and torch.is_grad_enabled() and selected.requires_grad
    pieces = []
    for i in starts:
        args = (selected[i : i + chunk_size], head, targets[i : i + chunk_size], collision)
        pieces.append(checkpoint(_chunk, *args, use_reentrant=False) if recompute else _chunk(*args))
    empty = selected.new_zeros(0, dtype=torch.float32)
    logps, log_collision = (torch.cat(column) for column in zip(*pieces, strict=True)) if pieces else (empty, empty)
    counts = response_mask[:, 1:].long().cumsum(-1)
    width = int(counts[:, -1].max()) if counts.numel() else 0
    per_token = logps.new_zeros(hidden.shape[0], width).index_put((rows, counts[rows, positions] - 1), logps)
    zeros = torch.zeros(hidden.shape[0], device=hidden.device, dtype=torch.float32)
    return ResponseLogps(zeros.index_add(0, rows, logps), per_token,
                         zeros.index_add(0, rows, log_collision) if collision else None)
