"""SimPO: Simple Preference Optimization with a Reference-Free Reward (Meng et al. 2024,
https://arxiv.org/abs/2405.14734).

SimPO's implicit reward is the policy's average log-probability per token, ``r(x, y) = β/|y| log π_θ(y|x)``,
which matches the quantity that guides generation and needs no reference model. A target margin γ > 0 asks the
chosen reward to beat the rejected one by at least γ (paper, Eq. 6):

    L = -log σ( β/|y_w| log π_θ(y_w|x) - β/|y_l| log π_θ(y_l|x) - γ )

With label smoothing ε this becomes TRL's conservative form ``-(1 - ε) log σ(z) - ε log σ(-z)``; the formula
is that of TRL 1.16's ``CPOTrainer`` with ``loss_type="simpo"`` (``simpo_gamma`` = γ, ``cpo_alpha=0``).
"""

from __future__ import annotations

from typing import ClassVar

from jsonargparse.typing import NonNegativeFloat, PositiveFloat
from torch import Tensor

from lit_align.objectives.base import Need, Objective, ObjectiveOutput, PreferenceInputs, check_beta
from lit_align.objectives.shapes import LabelSmoothing, conservative_logistic


def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """SimPO loss per pair: ``-log σ(β/|y_w| log π_θ(y_w|x) - β/|y_l| log π_θ(y_l|x) - γ)`` (Eq. 6).

    Args:
        policy_chosen_logps: summed policy log-probs of the chosen responses. Shape ``(batch,)``.
        policy_rejected_logps: the same for the rejected responses. Shape ``(batch,)``.
        chosen_lengths: response tokens of each chosen response (≥ 1). Shape ``(batch,)``.
        rejected_lengths: the same for the rejected responses. Shape ``(batch,)``.
        beta: reward scale β > 0; the paper tunes it in about 2-10.
        gamma: target reward margin γ ≥ 0; the paper keeps γ/β around 0.5.
        label_smoothing: label-flip rate ε in [0, 0.5) of the conservative form; 0 is the paper's loss.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each of shape ``(batch,)``; the rewards are
        ``β/|y| log π_θ(y|x)``, detached.
    """
    chosen_rewards = beta * policy_chosen_logps / chosen_lengths
    rejected_rewards = beta * policy_rejected_logps / rejected_lengths
    losses = conservative_logistic(chosen_rewards - rejected_rewards - gamma, label_smoothing)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


class SimPO(Objective):
    """SimPO (Meng et al. 2024): reference-free, length-normalised preference loss with a target margin γ.

    Intuition from the paper: the reward used in training should be the likelihood metric that guides
    generation (the average log-probability), and a margin between the pair's rewards improves separation.

    Args:
        beta: reward scale β > 0; the paper tunes it in about 2-10.
        gamma: target reward margin γ ≥ 0; the paper keeps γ/β around 0.5.
        label_smoothing: label-flip rate ε in [0, 0.5); 0 (the paper's loss) unless labels are noisy.
    """

    needs: ClassVar[frozenset[Need]] = frozenset()

    def __init__(
        self, beta: PositiveFloat = 2.0, gamma: NonNegativeFloat = 1.0, label_smoothing: LabelSmoothing = 0.0
    ) -> None:
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got gamma={gamma}")
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must lie in [0, 0.5), got label_smoothing={label_smoothing}")
        self.beta = check_beta(beta)
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    @property
    def name(self) -> str:
        """Label of this part's loss in a :class:`~lit_align.objectives.mixture.Mixture`."""
        return "simpo"

    def forward(self, inputs: PreferenceInputs) -> ObjectiveOutput:
        losses, chosen_rewards, rejected_rewards = simpo_loss(
            inputs.policy_chosen_logps,
            inputs.policy_rejected_logps,
            inputs.chosen_lengths,
            inputs.rejected_lengths,
            beta=self.beta,
            gamma=self.gamma,
            label_smoothing=self.label_smoothing,
        )
        return ObjectiveOutput(losses, chosen_rewards, rejected_rewards)
