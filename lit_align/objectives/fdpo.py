"""f-DPO: DPO under f-divergence constraints (Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct
Preference Optimization with Diverse Divergence Constraints", https://arxiv.org/abs/2309.16240).

Replacing the reverse-KL regulariser of RLHF by a general f-divergence gives (paper, Eq. 12)

    L = -log σ( β f'(π_θ(y_w|x) / π_ref(y_w|x)) - β f'(π_θ(y_l|x) / π_ref(y_l|x)) )

with f' applied to the sequence probability ratio ``u = exp(r)``, ``r`` the summed log-ratio; the derivatives
of the four divergences (the paper's Table 1) are in :mod:`lit_align.objectives.divergences`.

Mapping to TRL's ``DPOConfig``: ``divergence="reverse_kl"`` is ``f_divergence_type="reverse_kl"``,
``"js"`` is ``"js_divergence"``, ``"forward_kl"`` is ``"forward_kl"`` (or ``"alpha_divergence"`` with
``f_alpha_divergence_coef = 0``), and ``"alpha"`` is ``"alpha_divergence"`` with
``f_alpha_divergence_coef = 1 - alpha`` (TRL ≥ 0.29 writes its exponent as ``(coef - 1) r``; TRL ≤ 0.28 used
``coef = alpha`` directly, forward KL at ``coef = 1``).
"""

from __future__ import annotations

import torch.nn.functional as F
from jsonargparse.typing import OpenUnitInterval, PositiveFloat
from torch import Tensor

from lit_align.objectives.base import ObjectiveOutput, PreferenceInputs, check_beta
from lit_align.objectives.divergences import Divergence, f_prime
from lit_align.objectives.pairwise import PairwiseObjective


def fdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    divergence: Divergence,
    beta: float,
    alpha: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """f-DPO loss per pair: ``-log σ(β f'(u_w) - β f'(u_l))`` (Wang et al. 2023, Eq. 12).

    Args:
        policy_chosen_logps: summed policy log-probs of the chosen responses. Shape ``(batch,)``.
        policy_rejected_logps: the same for the rejected responses. Shape ``(batch,)``.
        ref_chosen_logps: summed reference log-probs of the chosen responses. Shape ``(batch,)``.
        ref_rejected_logps: the same for the rejected responses. Shape ``(batch,)``.
        divergence: ``reverse_kl`` (plain DPO), ``forward_kl``, ``js`` or ``alpha``.
        beta: strength of the divergence constraint; typically 0.01-0.5.
        alpha: α of the α-divergence, in (0, 1); ignored by the other divergences.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each of shape ``(batch,)``; the rewards are
        ``β f'(u)`` and detached.
    """
    check_beta(beta)
    chosen_rewards = beta * f_prime(policy_chosen_logps - ref_chosen_logps, divergence, alpha)
    rejected_rewards = beta * f_prime(policy_rejected_logps - ref_rejected_logps, divergence, alpha)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


class FDPO(PairwiseObjective):
    """DPO with an f-divergence constraint (Wang et al. 2023); ``divergence="reverse_kl"`` is plain DPO.
    It is the ``sigmoid`` shape of :class:`~lit_align.objectives.PairwiseObjective` (one validation of its
    settings), computed by :func:`fdpo_loss`.

    Intuition from the paper: reverse KL is mode-seeking and trades diversity for reward; forward KL is
    mass-covering and keeps diversity; JS and α-divergences sit in between.

    Args:
        divergence: ``reverse_kl`` | ``forward_kl`` | ``js`` | ``alpha``.
        beta: constraint strength β > 0; the paper uses 0.1.
        alpha: α in (0, 1) for the α-divergence (α → 0 is reverse KL, α = 1 forward KL); the paper
            sweeps 0.3, 0.5, 0.7.
    """

    def __init__(
        self,
        divergence: Divergence = "reverse_kl",
        beta: PositiveFloat = 0.1,
        alpha: OpenUnitInterval = 0.5,
    ) -> None:
        super().__init__(shape="sigmoid", divergence=divergence, beta=beta, alpha=alpha)

    def forward(self, inputs: PreferenceInputs) -> ObjectiveOutput:
        losses, chosen_rewards, rejected_rewards = fdpo_loss(
            inputs.policy_chosen_logps,
            inputs.policy_rejected_logps,
            inputs.ref_chosen_logps,
            inputs.ref_rejected_logps,
            divergence=self.divergence,
            beta=self.beta,
            alpha=self.alpha,
        )
        return ObjectiveOutput(losses, chosen_rewards, rejected_rewards)


class DPO(FDPO):
    """Direct Preference Optimization (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290).

    ``L = -log σ(β (log π_θ/π_ref)(y_w) - β (log π_θ/π_ref)(y_l))``: f-DPO with the reverse KL.

    Args:
        beta: KL strength β > 0; typically 0.1.
    """

    def __init__(self, beta: PositiveFloat = 0.1) -> None:
        super().__init__(divergence="reverse_kl", beta=beta)
