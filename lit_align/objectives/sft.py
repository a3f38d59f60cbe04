"""SFT term: the negative log-likelihood of the chosen responses, per token.

Alone it is supervised fine-tuning on the preferred responses; mixed with a preference loss
(:class:`~lit_align.objectives.mixture.Mixture`) it is the NLL term of RPO (Pang et al. 2024, "Iterative
Reasoning Preference Optimization", https://arxiv.org/abs/2404.19733, ``L_DPO + α L_NLL``) and the generation
loss of MPO (Wang et al. 2024, https://arxiv.org/abs/2411.10442). Two normalisations:

    batch     L = -Σ_i log π_θ(y_w,i|x_i) / Σ_i |y_w,i|     (TRL 1.16's ``sft``: mean over all tokens)
    sequence  L = -(1/B) Σ_i log π_θ(y_w,i|x_i) / |y_w,i|   (RPO's per-sequence token mean)

Per pair, ``batch`` gives ``-log π_θ(y_w,i|x_i) / mean_j |y_w,j|`` so that the batch mean is TRL's value.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from torch import Tensor

from lit_align.objectives.base import Need, Objective, ObjectiveOutput, PreferenceInputs

Normalisation = Literal["batch", "sequence"]


def sft_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    normalize: Normalisation = "batch",
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token negative log-likelihood of the chosen responses, one value per pair.

    Args:
        policy_chosen_logps: summed policy log-probs of the chosen responses. Shape ``(batch,)``.
        policy_rejected_logps: the same for the rejected responses (only for the rewards). Shape ``(batch,)``.
        chosen_lengths: response tokens of each chosen response (≥ 1). Shape ``(batch,)``.
        rejected_lengths: the same for the rejected responses. Shape ``(batch,)``.
        normalize: ``batch`` (divide by the batch's mean chosen length: the batch mean is the mean NLL over
            all chosen tokens, as TRL) or ``sequence`` (divide each pair by its own length, as RPO).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each of shape ``(batch,)``; the rewards are the
        per-token mean log-probs ``log π_θ(y|x) / |y|``, detached (SFT has no implicit reward of its own).
    """
    if normalize not in Normalisation.__args__:
        raise ValueError(f"unknown normalize {normalize!r}; choose one of {Normalisation.__args__}")
    denominator = chosen_lengths.mean() if normalize == "batch" else chosen_lengths
    losses = -policy_chosen_logps / denominator
    chosen_rewards = (policy_chosen_logps / chosen_lengths).detach()
    rejected_rewards = (policy_rejected_logps / rejected_lengths).detach()
    return losses, chosen_rewards, rejected_rewards


class SFT(Objective):
    """Negative log-likelihood of the chosen responses per token; needs no reference.

    Use it alone for SFT on the chosen responses, or in a :class:`~lit_align.objectives.mixture.Mixture`
    (e.g. DPO + 0.2 · SFT, RPO-style; or MPO).

    Args:
        normalize: ``batch`` (mean over all chosen tokens of the batch, as TRL 1.16) or ``sequence`` (mean of
            per-sequence token means, as RPO).
    """

    needs: ClassVar[frozenset[Need]] = frozenset()

    def __init__(self, normalize: Normalisation = "batch") -> None:
        if normalize not in Normalisation.__args__:
            raise ValueError(f"unknown normalize {normalize!r}; choose one of {Normalisation.__args__}")
        self.normalize = normalize

    @property
    def name(self) -> str:
        """Label of this part's loss in a :class:`~lit_align.objectives.mixture.Mixture`."""
        return "sft"

    def forward(self, inputs: PreferenceInputs) -> ObjectiveOutput:
        losses, chosen_rewards, rejected_rewards = sft_loss(
            inputs.policy_chosen_logps,
            inputs.policy_rejected_logps,
            inputs.chosen_lengths,
            inputs.rejected_lengths,
            normalize=self.normalize,
        )
        return ObjectiveOutput(losses, chosen_rewards, rejected_rewards)
