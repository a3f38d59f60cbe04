"""LD-DPO: length-desensitised log-probs (Liu et al. 2024, "LD-DPO: Length Desensitization in Direct Preference
Optimization", https://arxiv.org/abs/2409.06411, Eq. 12).

DPO's summed log-probs grow with length, so the longer response of a pair dominates the margin. LD-DPO splits each
response at the pair's shared length ``ℓ_p = min(ℓ_w, ℓ_l)`` and damps the excess of the longer one:

    log π̂(y|x) = Σ_{t ≤ ℓ_p} log π(y_t|x, y<t) + α Σ_{t > ℓ_p} log π(y_t|x, y<t)        α in [0, 1]

for the policy and the reference alike, before any loss shape (TRL 1.16's ``ld_alpha``; α = 1 is plain DPO, α = 0
keeps the shared prefix only; the paper's best α lies in 0.1–0.6 depending on the model).
"""

from __future__ import annotations

import torch
from torch import Tensor


def desensitised_logps(token_logps: Tensor, shared_lengths: Tensor, ld_alpha: float) -> Tensor:
    """``Σ_{t ≤ ℓ_p} log π(y_t) + α Σ_{t > ℓ_p} log π(y_t)`` per row.

    Args:
        token_logps: per-token response log-probs, left-aligned (response token ``t`` in column ``t``), zero past
            each response's end. Shape ``(batch, time)``.
        shared_lengths: ``ℓ_p``, the pair's shorter response length. Shape ``(batch,)``.
        ld_alpha: α in [0, 1], the weight of the tokens past ``ℓ_p``.
    """
    positions = torch.arange(token_logps.shape[-1], device=token_logps.device)
    shared = positions < shared_lengths.unsqueeze(-1)
    prefix = (token_logps * shared).sum(-1)
    return prefix + ld_alpha * (token_logps.sum(-1) - prefix)


def pair_desensitised_logps(
    chosen_token_logps: Tensor, rejected_token_logps: Tensor, chosen_lengths: Tensor, rejected_lengths: Tensor,
    ld_alpha: float,
) -> tuple[Tensor, Tensor]:
    """LD-DPO's ``(log π̂(y_w|x), log π̂(y_l|x))`` of each pair, split at ``ℓ_p = min(ℓ_w, ℓ_l)``."""
    shared = torch.minimum(chosen_lengths, rejected_lengths)
    return (desensitised_logps(chosen_token_logps, shared, ld_alpha),
            desensitised_logps(rejected_token_logps, shared, ld_alpha))
