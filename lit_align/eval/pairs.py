"""Held-out preference pairs under an :class:`~lit_align.module.AlignmentModule`: the implicit reward margin of
each pair (for reward accuracy and calibration), the policy's mean token log-prob of each response (for the
likelihood calibration) and the sequential KL of its two responses.

TDPO (Zeng et al. 2024, Fig. 3) tracks ``SeqKL(x, y) = Σ_t KL(π_ref(·|x, y<t) ‖ π_θ(·|x, y<t))`` of chosen and
rejected responses: under DPO the rejected one's grows much faster, and TDPO's token-level constraint keeps the
two closer. Measured here for any objective, whenever the reference is an online model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor

from lit_align.objectives.base import ObjectiveOutput, PreferenceInputs
from lit_align.reference import OnlineReference


@dataclass(frozen=True)
class PairStatistics:
    """Per-pair values on held-out pairs, each ``(n_pairs,)``, on the CPU."""

    margins: Tensor
    """``r(x, y_w) - r(x, y_l)``: the objective's chosen minus rejected reward (β included)."""
    chosen_seq_kl: Tensor | None
    """``SeqKL(x, y_w)``; ``None`` without an online reference."""
    rejected_seq_kl: Tensor | None
    """``SeqKL(x, y_l)``; ``None`` without an online reference."""
    chosen_mean_logps: Tensor | None = None
    """``log π_θ(y_w|x) / |y_w|``: the policy's mean token log-prob of the chosen response (the input of
    :class:`~lit_align.eval.likelihood_calibration.LikelihoodCalibrationError`)."""
    rejected_mean_logps: Tensor | None = None
    """``log π_θ(y_l|x) / |y_l|``."""

    @property
    def accuracy(self) -> float:
        """Fraction of pairs whose chosen response gets the higher reward (ties count as wrong)."""
        return float((self.margins > 0).float().mean())


@torch.no_grad()
def pair_statistics(module, batches: Iterable[dict[str, Tensor]]) -> PairStatistics:
    """Reward margins and sequential KLs of every pair in ``batches`` (collated as for training).

    Args:
        module: an :class:`~lit_align.module.AlignmentModule` whose policy is built (``module(batch)`` gives the
            objective's output) and whose ``reference`` serves the KL when it is an online model.
        batches: the pairs, e.g. a validation dataloader; moved to the module's device here.
    """
    online = isinstance(module.reference, OnlineReference)
    was_training = module.policy.training
    module.policy.eval()
    margins, chosen_kl, rejected_kl, chosen_lp, rejected_lp = [], [], [], [], []
    try:
        for batch in batches:
            batch = move_data_to_device(batch, module.device)
            inputs, output, seq_kl = _pair_pass(module, batch, online)
            margins.append((output.chosen_rewards - output.rejected_rewards).float().cpu())
            chosen_lp.append((inputs.policy_chosen_logps / inputs.chosen_lengths).double().cpu())
            rejected_lp.append((inputs.policy_rejected_logps / inputs.rejected_lengths).double().cpu())
            if seq_kl is not None:
                chosen, rejected = seq_kl.cpu().chunk(2)
                chosen_kl.append(chosen)
                rejected_kl.append(rejected)
    finally:
        module.policy.train(was_training)
    return PairStatistics(
        margins=torch.cat(margins) if margins else torch.zeros(0),
        chosen_seq_kl=torch.cat(chosen_kl) if online and chosen_kl else None,
        rejected_seq_kl=torch.cat(rejected_kl) if online and rejected_kl else None,
        chosen_mean_logps=torch.cat(chosen_lp) if chosen_lp else torch.zeros(0, dtype=torch.float64),
        rejected_mean_logps=torch.cat(rejected_lp) if rejected_lp else torch.zeros(0, dtype=torch.float64),
    )


def _pair_pass(
    module, batch: dict[str, Tensor], online: bool
) -> tuple[PreferenceInputs, ObjectiveOutput, Tensor | None]:
    """The objective's inputs and output and, with an online reference, the sequential KL of every row, from the
    module's own :meth:`~lit_align.module.AlignmentModule.preference_inputs` (asked for ``token_kl`` as well)."""
    inputs = module.preference_inputs(batch, also=frozenset({"token_kl"}) if online else frozenset())
    seq_kl = torch.cat([inputs.chosen_seq_kl, inputs.rejected_seq_kl]) if online else None
    return inputs, module.objective(inputs), seq_kl
