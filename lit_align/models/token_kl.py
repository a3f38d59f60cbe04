"""Sequential token-level KL and response log-probs of policy and reference, from one chunked LM-head pass.

TDPO (Zeng et al. 2024) needs, per sequence, the sequential KL over the response

    SeqKL(x, y) = Σ_t KL(π_ref(·|x, y<t) ‖ π_θ(·|x, y<t))
                = Σ_t Σ_v π_ref(v|x, y<t) (log π_ref(v|x, y<t) - log π_θ(v|x, y<t)),

which reads both models' full next-token distributions, besides the summed response log-probs both models
give to ``y``. All three come out of one pass here::

    sequence_logps_and_kl(hidden, head, ref_hidden, ref_head, input_ids, response_mask, chunk_size=1024)
        -> TokenKL(policy_logps, ref_logps, seq_kl)   # each (batch,), fp32 (float64 for float64 heads)

- ``hidden`` / ``ref_hidden``: final hidden states (after the last norm) of policy and reference on the same
  ``input_ids``, ``(batch, time, hidden)``; ``head`` / ``ref_head``: their LM heads. The reference side never
  receives gradients (its hidden states are detached, its head runs under ``no_grad``).
- ``policy_logps`` and ``seq_kl`` carry gradients to ``hidden`` and ``head``; ``ref_logps`` is detached.
- The positions are those of :func:`lit_align.models.logprobs.sequence_logps` (hidden state ``t`` predicts response
  token ``t + 1``, see :func:`~lit_align.models.logprobs.response_positions`), so ``policy_logps`` equals
  ``sequence_logps(hidden, head, ...)`` and ``ref_logps`` equals
  ``sequence_logps(ref_hidden, ref_head, ...)``.

Memory: only response positions go through the heads, ``chunk_size`` positions at a time, so at most a few
``(chunk_size, vocab)`` tensors live at once, never two full ``(batch, time, vocab)`` fp32 log-softmaxes.
Within a chunk a custom autograd function keeps only the policy logits and the reference probabilities
for backward and computes the gradient analytically (``softmax(z) - p_ref`` for the KL), in one buffer. With
more than one chunk and gradients enabled each chunk is also checkpointed: the logits of both models are
recomputed in the backward pass. Hence ``ref_head`` must be a pure function of its input: it is called again
during backward, outside any context (such as a disabled adapter) that was active during forward.

Numerics: log-softmax via logsumexp, never ``softmax().log()``; vocabulary entries where the reference
probability is exactly zero contribute exactly zero (``0 · log 0 = 0``), so ``-inf`` reference logits give
finite KL and finite gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lit_align.models.logprobs import response_positions


class TokenKL(NamedTuple):
    """Per-sequence results of :func:`sequence_logps_and_kl`, each of shape ``(batch,)``."""

    policy_logps: Tensor
    """``Σ_t log π_θ(y_t | x, y<t)`` over response tokens; differentiable."""
    ref_logps: Tensor
    """``Σ_t log π_ref(y_t | x, y<t)``; detached."""
    seq_kl: Tensor
    """``Σ_t KL(π_ref(·|x, y<t) ‖ π_θ(·|x, y<t))``; differentiable w.r.t. the policy."""


def _upcast(logits: Tensor) -> Tensor:
    """Logits in at least fp32 (float64 stays float64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


class _LogpsAndKL(torch.autograd.Function):
    """Per position: ``log π_θ(y)``, ``log π_ref(y)`` and ``KL(π_ref ‖ π_θ)`` from policy logits ``z``.

    Keeps only ``z`` and ``p_ref`` for backward and writes the gradient into one buffer, from
    ``∂KL/∂z = softmax(z) Σ_v p_ref - p_ref`` and ``∂ log π_θ(y)/∂z = onehot(y) - softmax(z)``.
    The reference logits are computed inside (``ref_head(ref_hidden)``) so they can be overwritten in place.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, ref_hidden: Tensor, ref_head: nn.Module, targets: Tensor):
        index = targets.unsqueeze(-1)
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        ref = _upcast(ref_head(ref_hidden))
        ref_lse = torch.logsumexp(ref, dim=-1, keepdim=True)
        ref_p = (ref - ref_lse).exp_()
        ref_logps = (ref.gather(-1, index) - ref_lse).squeeze(-1)
        # ref becomes p_ref (log p_ref - log p) in place; 0 where p_ref == 0 (0 · log 0 = 0)
        kl = ref.sub_(logits).sub_(ref_lse - lse).mul_(ref_p).masked_fill_(ref_p == 0, 0.0).sum(-1)
        ctx.save_for_backward(logits, lse, ref_p, ref_p.sum(-1, keepdim=True), index)
        ctx.mark_non_differentiable(ref_logps)
        return (logits.gather(-1, index) - lse).squeeze(-1), ref_logps, kl

    @staticmethod
    def backward(ctx, grad_logps: Tensor, _: Tensor, grad_kl: Tensor):
        logits, lse, ref_p, ref_mass, index = ctx.saved_tensors
        grad_logps, grad_kl = grad_logps.unsqueeze(-1), grad_kl.unsqueeze(-1)
        grad = (logits - lse).exp_().mul_(grad_kl * ref_mass - grad_logps)
        grad.addcmul_(ref_p, grad_kl, value=-1.0).scatter_add_(-1, index, grad_logps)
        return grad, None, None, None


def _chunk(
    hidden: Tensor, head: nn.Module, ref_hidden: Tensor, ref_head: nn.Module, targets: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    return _LogpsAndKL.apply(_upcast(head(hidden)), ref_hidden, ref_head, targets)


def sequence_logps_and_kl(
    hidden: Tensor,
    head: nn.Module,
    ref_hidden: Tensor,
    ref_head: nn.Module,
    input_ids: Tensor,
    response_mask: Tensor,
    chunk_size: int = 1024,
) -> TokenKL:
    """Summed response log-probs of policy and reference and the sequential KL, per row.

    Args:
        hidden: policy final hidden states, ``(batch, time, hidden)``.
        head: policy LM head.
        ref_hidden: reference final hidden states on the same ``input_ids``, ``(batch, time, hidden)``.
        ref_head: reference LM head; called again in backward when chunks are checkpointed.
        input_ids: ``(batch, time)`` token ids.
        response_mask: ``(batch, time)`` bool, true on response tokens.
        chunk_size: response positions per LM-head call; the peak extra memory is a few
            ``(chunk_size, vocab)`` fp32 tensors.

    Returns:
        :class:`TokenKL` ``(policy_logps, ref_logps, seq_kl)``, each ``(batch,)``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got chunk_size={chunk_size}")
    rows, positions = response_positions(response_mask)
    selected, ref_selected = hidden[rows, positions], ref_hidden.detach()[rows, positions]
    targets = input_ids[rows, positions + 1]
    starts = range(0, len(targets), chunk_size)
    recompute = len(starts) > 1 and torch.is_grad_enabled()
    pieces = []
    for i in starts:
        args = (
            selected[i : i + chunk_size],
            head,
            ref_selected[i : i + chunk_size],
            ref_head,
            targets[i : i + chunk_size],
        )
        pieces.append(checkpoint(_chunk, *args, use_reentrant=False) if recompute else _chunk(*args))
    if pieces:
        per_position = [torch.cat(column) for column in zip(*pieces, strict=True)]
    else:
        per_position = [selected.new_zeros(0, dtype=torch.promote_types(hidden.dtype, torch.float32))] * 3
    totals = [
        torch.zeros(hidden.shape[0], device=hidden.device, dtype=values.dtype).index_add(0, rows, values)
        for values in per_position
    ]
    return TokenKL(totals[0], totals[1].detach(), totals[2])
