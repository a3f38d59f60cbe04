"""The Bradley–Terry loss of a reward model on preference pairs.

    P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l))                        (Bradley & Terry 1952)
    L = −log σ(r(x, y_w) − r(x, y_l)) + η · (r(x, y_w) + r(x, y_l))²   per pair

The first term is the reward-model loss of InstructGPT (Ouyang et al. 2022, https://arxiv.org/abs/2203.02155,
eq. 1) and of DPO's derivation (Rafailov et al. 2023, eq. 2); it depends on reward differences only, so a
reward model is defined up to a constant per prompt. The second, with ``η > 0``, pulls the rewards towards zero
mean (Eisenstein et al. 2023, https://arxiv.org/abs/2312.09244; TRL's ``center_rewards_coefficient``), which
keeps rewards of several reward models or checkpoints comparable; ``η = 0`` (the default) is plain
Bradley–Terry.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lit_align.errors import ConfigError


def bradley_terry_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, center_coefficient: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair Bradley–Terry losses (module docstring).

    Args:
        chosen_rewards: ``r(x, y_w)``, shape ``(batch,)``.
        rejected_rewards: ``r(x, y_l)``, shape ``(batch,)``.
        center_coefficient: ``η ≥ 0``, the weight of the centring term (typically 0 or 1e-2).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(batch,)``; the rewards detached.
    """
    check_center_coefficient(center_coefficient)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    if center_coefficient > 0:
        losses = losses + center_coefficient * (chosen_rewards + rejected_rewards) ** 2
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def check_center_coefficient(center_coefficient: float) -> float:
    """Refuse a negative centring weight (it would push rewards apart without bound)."""
    if not center_coefficient >= 0:
        raise ConfigError("center_coefficient", center_coefficient, "a weight >= 0 (0: plain Bradley-Terry)")
    return center_coefficient
