"""Per-sequence log-probabilities of response tokens, computed from final hidden states and the LM head.

Only positions that predict a response token go through the LM head, in chunks, so neither the prompt's
logits nor a full fp32 ``(batch, time, vocab)`` log-softmax is ever built. With more than one chunk each
chunk is checkpointed: its logits are recomputed in the backward pass instead of being kept.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def response_positions(response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows and positions ``t`` whose hidden state predicts a response token ``t + 1``.

    Args:
        response_mask: ``(batch, time)`` bool, true on response tokens (EOS included), false on prompt and pad.
    """
    predicts_response = response_mask[:, 1:]
    rows, positions = predicts_response.nonzero(as_tuple=True)
    return rows, positions


def token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """``log softmax(logits)[target]`` per row, in fp32, without materialising the log-softmax."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _head_token_logps(hidden: Tensor, head: nn.Module, targets: Tensor) -> Tensor:
    return token_logps(head(hidden), targets)


def sequence_logps(
    hidden: Tensor,
    head: nn.Module,
    input_ids: Tensor,
    response_mask: Tensor,
    chunk_size: int = 4096,
) -> Tensor:
    """Summed log-probs of the response tokens of each row: ``Σ_t log π(y_t | x, y_<t)``.

    Args:
        hidden: final hidden states (after the model's last norm), ``(batch, time, hidden)``.
        head: the LM head mapping hidden states to vocabulary logits.
        input_ids: ``(batch, time)`` token ids.
        response_mask: ``(batch, time)`` bool, true on response tokens.
        chunk_size: response positions per LM-head call.

    Returns:
        ``(batch,)`` fp32 summed log-probs.
    """
    rows, positions = response_positions(response_mask)
    selected = hidden[rows, positions]
    targets = input_ids[rows, positions + 1]
    chunks = range(0, len(targets), chunk_size)
    recompute = len(chunks) > 1 and torch.is_grad_enabled() and selected.requires_grad
    pieces = [
        checkpoint(_head_token_logps, selected[i : i + chunk_size], head, targets[i : i + chunk_size],
                   use_reentrant=False)
        if recompute
        else _head_token_logps(selected[i : i + chunk_size], head, targets[i : i + chunk_size])
        for i in chunks
    ]
    logps = torch.cat(pieces) if pieces else selected.new_zeros(0, dtype=torch.float32)
    return torch.zeros(hidden.shape[0], device=hidden.device, dtype=torch.float32).index_add(0, rows, logps)
