"""TDPO: Token-level Direct Preference Optimization (Zeng et al., ICML 2024, arXiv 2404.11999,
https://arxiv.org/abs/2404.11999).

Writing the RLHF objective per token, with a KL constraint at every step, turns the Bradley-Terry preference
into the paper's token-level form ``P(y_w ≻ y_l | x) = σ(u - δ)``, with

    u = β log π_θ(y_w|x)/π_ref(y_w|x) - β log π_θ(y_l|x)/π_ref(y_l|x)        (DPO's reward margin)
    δ = β SeqKL(x, y_l) - β SeqKL(x, y_w),   SeqKL(x, y) = Σ_t KL(π_ref(·|x, y<t) ‖ π_θ(·|x, y<t))

    TDPO1:  L = -log σ(u - δ)
    TDPO2:  L = -log σ(u - α δ₂),   δ₂ = β SeqKL(x, y_l) - sg(β SeqKL(x, y_w))

with ``sg`` the stop-gradient. TDPO2 keeps the gradient that holds the rejected response's KL down but no
longer pulls the chosen response's KL up, and α scales the KL term; the paper recommends TDPO2 with α = 0.5.

Implementation notes: the authors' code (``tdpo_loss`` in ``trainers.py`` of
github.com/Vance0124/Token-level-Direct-Preference-Optimization) computes exactly these two losses; we follow it
where the equations leave a choice:

- α appears only in TDPO2; TDPO1 ignores it.
- The logged rewards are ``β (log π_θ/π_ref(y) + SeqKL(x, y))`` for each response, without α, in both
  variants; so in TDPO2 the reward margin is not the argument of the sigmoid.
- The authors compute the KL from ``softmax(ref_logits).log()``, which gives NaN where a reference
  probability underflows to zero; :mod:`lit_align.models.token_kl` uses ``0 · log 0 = 0`` instead.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat
from torch import Tensor

from lit_align.objectives.base import Need, Objective, ObjectiveOutput, PreferenceInputs, check_beta

Variant = Literal[1, 2]


def tdpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_seq_kl: Tensor,
    rejected_seq_kl: Tensor,
    *,
    beta: float,
    alpha: float = 0.5,
    variant: Variant = 2,
) -> tuple[Tensor, Tensor, Tensor]:
    """TDPO loss per pair: ``-log σ(u - δ)`` (TDPO1) or ``-log σ(u - α δ₂)`` (TDPO2), Zeng et al. 2024.

    Args:
        policy_chosen_logps: summed policy log-probs of the chosen responses. Shape ``(batch,)``.
        policy_rejected_logps: the same for the rejected responses. Shape ``(batch,)``.
        ref_chosen_logps: summed reference log-probs of the chosen responses. Shape ``(batch,)``.
        ref_rejected_logps: the same for the rejected responses. Shape ``(batch,)``.
        chosen_seq_kl: ``SeqKL(x, y_w) = Σ_t KL(π_ref ‖ π_θ)`` over the chosen response. Shape ``(batch,)``.
        rejected_seq_kl: ``SeqKL(x, y_l)`` over the rejected response. Shape ``(batch,)``.
        beta: KL strength β > 0; the paper uses 0.1 (typically 0.1-0.5).
        alpha: weight α of the sequential-KL term in TDPO2 (paper: 0.5); ignored by TDPO1.
        variant: 1 for TDPO1, 2 for TDPO2 (stop-gradient on the chosen SeqKL).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(batch,)``; the rewards are
        ``β (log π_θ/π_ref + SeqKL)`` of each response, detached, as in the authors' code.
    """
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps
    if variant == 1:
        kl_gap = rejected_seq_kl - chosen_seq_kl
    elif variant == 2:
        kl_gap = alpha * (rejected_seq_kl - chosen_seq_kl.detach())
    else:
        raise ValueError(f"variant must be 1 or 2, got variant={variant!r}")
    losses = -F.logsigmoid(beta * (chosen_log_ratio - rejected_log_ratio - kl_gap))
    chosen_rewards = beta * (chosen_log_ratio + chosen_seq_kl).detach()
    rejected_rewards = beta * (rejected_log_ratio + rejected_seq_kl).detach()
    return losses, chosen_rewards, rejected_rewards


class TDPO(Objective):
    """Token-level DPO (Zeng et al. 2024): DPO's reward margin minus a gap of sequential forward KLs.

    Intuition from the paper: under DPO the KL on dispreferred responses grows much faster than on
    preferred ones; constraining the per-token forward KL keeps the two in balance, which improves the
    trade-off between alignment and generation diversity.

    Needs the reference's full next-token distributions (``token_kl``), so an online reference model.
    Metrics (per pair, detached): ``kl/chosen`` = SeqKL(x, y_w), ``kl/rejected`` = SeqKL(x, y_l),
    ``kl/margin`` = their difference (chosen - rejected).

    Args:
        variant: 1 (TDPO1) or 2 (TDPO2, stop-gradient on the chosen SeqKL; the paper's recommendation).
            The authors suggest TDPO1 at low learning rates and TDPO2 at higher ones.
        beta: KL strength β > 0; the paper uses 0.1.
        alpha: weight α > 0 of the SeqKL gap in TDPO2; the authors recommend 0.5.
            Ignored by TDPO1.
    """

    needs: ClassVar[frozenset[Need]] = frozenset({"reference_logps", "token_kl"})

    def __init__(self, variant: Variant = 2, beta: PositiveFloat = 0.1, alpha: PositiveFloat = 0.5) -> None:
        if variant not in (1, 2):
            raise ValueError(f"variant must be 1 or 2, got variant={variant!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got alpha={alpha}")
        self.variant = variant
        self.beta = check_beta(beta)
        self.alpha = alpha

    def forward(self, inputs: PreferenceInputs) -> ObjectiveOutput:
        losses, chosen_rewards, rejected_rewards = tdpo_loss(
            inputs.policy_chosen_logps,
            inputs.policy_rejected_logps,
            inputs.ref_chosen_logps,
            inputs.ref_rejected_logps,
            inputs.chosen_seq_kl,
            inputs.rejected_seq_kl,
            beta=self.beta,
            alpha=self.alpha,
            variant=self.variant,
        )
        chosen_kl, rejected_kl = inputs.chosen_seq_kl.detach(), inputs.rejected_seq_kl.detach()
        metrics = {"kl/chosen": chosen_kl, "kl/rejected": rejected_kl, "kl/margin": chosen_kl - rejected_kl}
        return ObjectiveOutput(losses, chosen_rewards, rejected_rewards, metrics)
