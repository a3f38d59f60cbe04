"""WPO: weighted preference optimisation (Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference
Optimization", https://arxiv.org/abs/2406.11827, Eqs. 2–3).

Off-policy pairs are reweighted by how likely the current policy is to produce them, which simulates on-policy
learning. Each pair's loss is multiplied by ``w(x, y_w) · w(x, y_l)`` (no gradient), with the length-normalised,
*aligned* sequence probability of Eq. 3

    w(x, y) = exp( (1/ℓ) Σ_t [ log π_θ(y_t|x, y<t) − log Σ_v π_θ(v|x, y<t)² ] )

Dividing each token's probability by the policy's collision probability ``Σ_v π_θ(v)²`` (its expected probability
of its own samples) brings the weight of a typical on-policy sample near 1 (TRL 1.16's ``use_weighting``, which
does not clamp the weight).
"""

from __future__ import annotations

import torch
from torch import Tensor


def wpo_weights(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_log_collision: Tensor,
    rejected_log_collision: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
) -> Tensor:
    """WPO's per-pair weight ``w(x, y_w) · w(x, y_l)``, detached.

    Args:
        policy_chosen_logps: ``Σ_t log π_θ(y_t|x, y<t)`` of the chosen responses (plain sums, not LD-DPO's).
            Shape ``(batch,)``.
        policy_rejected_logps: the same for the rejected responses.
        chosen_log_collision: ``Σ_t log Σ_v π_θ(v|x, y<t)²`` over the chosen response. Shape ``(batch,)``.
        rejected_log_collision: the same for the rejected responses.
        chosen_lengths: response tokens of the chosen responses (clamped at 1). Shape ``(batch,)``.
        rejected_lengths: the same for the rejected responses.
    """
    with torch.no_grad():
        chosen = (policy_chosen_logps - chosen_log_collision) / chosen_lengths.clamp(min=1)
        rejected = (policy_rejected_logps - rejected_log_collision) / rejected_lengths.clamp(min=1)
        return torch.exp(chosen + rejected)
