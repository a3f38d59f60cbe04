"""Held-out preference pairs under an :class:`~lit_align.module.AlignmentModule`: the implicit reward margin of
each pair (for reward accuracy and calibration), the policy's mean token log-prob of each response (for the
likelihood calibration) and the sequential KL of its two responses.

TDPO (Zeng et al. 2024, Fig. 3) tracks ``SeqKL(x, y) = Σ_t KL(π_ref(·|x, y<t) ‖ π_θ(·|x, y<t))`` of chosen and
rejected responses: under DPO the rejected one's grows much faster, and TDPO's token-level constraint keeps the
two closer. Measured here for any objective, whenever the reference is an online model.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor

from lit_align.eval.likelihood_calibration import without_final_end_token
from lit_align.models.layout import decoder_inputs, response_states
from lit_align.models.logprobs import sequence_logps
from lit_align.models.policy import final_hidden, lm_head
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
    :class:`~lit_align.eval.likelihood_calibration.LikelihoodCalibrationError`); with ``exclude_eos`` its final
    end token left out of both sum and count (the f-DPO authors' reading)."""
    rejected_mean_logps: Tensor | None = None
    """``log π_θ(y_l|x) / |y_l|``."""

    @property
    def accuracy(self) -> float:
        """Fraction of pairs whose chosen response gets the higher reward (ties count as wrong)."""
        return float((self.margins > 0).float().mean())


@torch.no_grad()
def pair_statistics(module, batches: Iterable[dict[str, Tensor]], exclude_eos: bool = False,
                    end_ids: Collection[int] | None = None) -> PairStatistics:
    """Reward margins and sequential KLs of every pair in ``batches`` (collated as for training).

    Args:
        module: an :class:`~lit_align.module.AlignmentModule` whose policy is built (``module(batch)`` gives the
            objective's output) and whose ``reference`` serves the KL when it is an online model.
        batches: the pairs, e.g. a validation dataloader; moved to the module's device here.
        exclude_eos: the mean token log-probs (for the likelihood calibration) leave out each response's final
            token where it is an end token, as the f-DPO authors score prompt + response without EOS; costs a
            second policy pass. Margins, accuracy and SeqKL are unchanged (they are the objective's).
        end_ids: the end tokens (EOS, a chat template's end of turn); unset: the policy config's
            ``eos_token_id`` (an id or a list).
    """
    online = isinstance(module.reference, OnlineReference)
    ends = _end_ids(module, end_ids) if exclude_eos else None
    was_training = module.policy.training
    module.policy.eval()
    margins, chosen_kl, rejected_kl, chosen_lp, rejected_lp = [], [], [], [], []
    try:
        for batch in batches:
            batch = move_data_to_device(batch, module.device)
            inputs, output, seq_kl = _pair_pass(module, batch, online)
            margins.append((output.chosen_rewards - output.rejected_rewards).float().cpu())
            if ends is None:
                means = torch.cat([inputs.policy_chosen_logps / inputs.chosen_lengths,
                                   inputs.policy_rejected_logps / inputs.rejected_lengths])
            else:
                means = _mean_logps_without_end(module, batch, ends)
            chosen, rejected = means.double().cpu().chunk(2)
            chosen_lp.append(chosen)
            rejected_lp.append(rejected)
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


def _end_ids(module, end_ids: Collection[int] | None) -> list[int]:
    if end_ids is None:
        eos = getattr(module.policy.config, "eos_token_id", None)
        end_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if not end_ids:
        raise ValueError("exclude_eos needs the end tokens: give end_ids (the policy config names no eos_token_id)")
    return list(end_ids)


def _mean_logps_without_end(module, batch: dict[str, Tensor], end_ids: list[int]) -> Tensor:
    """``(2B,)`` mean policy log-prob per response token, each response's final end token left out."""
    view = module.pair_view(batch)
    mask = without_final_end_token(view["input_ids"], view["response_mask"], end_ids)
    hidden = response_states(view, final_hidden(module.policy, **decoder_inputs(view, module.policy)))
    logps = sequence_logps(hidden, lm_head(module.policy), view["input_ids"], mask, module.logits_chunk_size)
    return logps / mask[:, 1:].sum(-1).clamp(min=1)


def _pair_pass(
    module, batch: dict[str, Tensor], online: bool
) -> tuple[PreferenceInputs, ObjectiveOutput, Tensor | None]:
    """The objective's inputs and output and, with an online reference, the sequential KL of every row, from the
    module's own :meth:`~lit_align.module.AlignmentModule.preference_inputs` (asked for ``token_kl`` as well)."""
    inputs = module.preference_inputs(batch, also=frozenset({"token_kl"}) if online else frozenset())
    seq_kl = torch.cat([inputs.chosen_seq_kl, inputs.rejected_seq_kl]) if online else None
    return inputs, module.objective(inputs), seq_kl
