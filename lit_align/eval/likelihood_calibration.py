"""The f-DPO paper's calibration measure: the expected calibration error of the policy's own likelihood.

Wang et al. 2023 ("Beyond Reverse KL: Generalizing Direct Preference Optimization with Diverse Divergence
Constraints", §5.3) report that the divergence changes the expected calibration error. Their released code
(``cali/hh_cali_eval.py`` and ``cali/cali_plot.py`` of github.com/alecwangcq/f-divergence-dpo) does not bin
the reward-margin probability ``σ(r_w - r_l)`` (that is :class:`~lit_align.eval.metrics.PreferenceCalibrationError`,
a different measure); for each held-out pair it takes

    ℓ_w = (1/|y_w|) Σ_t log π_θ(y_w,t | x, y_w,<t)        (mean token log-prob of the chosen response)
    ℓ_l = (1/|y_l|) Σ_t log π_θ(y_l,t | x, y_l,<t)
    confidence  c = exp(ℓ_w)                               (the chosen response's geometric-mean token prob)
    correct       = [ℓ_w > ℓ_l]                            (the policy prefers the chosen response per token)

and with ``B`` bins ``[b/B, (b+1)/B)``, ``b = 0..B-1`` (``numpy.digitize`` over ``linspace(0, 1, B + 1)``),

    ECE_lik = (1/n) Σ_b n_b · | mean correct_b - mean c_b |

where ``n`` counts every pair; a confidence of exactly 1 falls in no bin (as in the authors' code) but still
counts in ``n``. Only the policy enters: no reference, no β.

A departure, and the option that removes it: lit-align's responses end in one end token (EOS, or a chat
template's end of turn) that the policy is trained to emit, and ``|y|`` above counts it; the authors score
prompt + response text without EOS, so their ``ℓ`` is the mean over the response's text tokens only. Both readings
come from :func:`~lit_align.eval.pairs.pair_statistics`: ``exclude_eos=True`` leaves each response's final end
token out of the sum and the count (:func:`without_final_end_token`), the authors' reading; the default keeps it.
A response cut at ``max_length`` has no end token and is the same under both.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from jsonargparse.typing import PositiveInt
from torch import Tensor
from torchmetrics import Metric


class LikelihoodCalibrationError(Metric):
    """ECE of ``exp(mean token log-prob of the chosen response)`` against ``[ℓ_w > ℓ_l]``: the calibration
    measure of the f-DPO paper's released code (see the module docstring for the equation and the source).

    The state is per-bin sums (count, confidence, correct) and the pair count, each summed over processes, so
    the value over several processes is the value over all of their pairs.

    Args:
        n_bins: number of equal-width confidence bins over [0, 1); 10 as in the authors' code.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, n_bins: PositiveInt = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        if not n_bins >= 1:
            raise ValueError(f"n_bins must be >= 1, got n_bins={n_bins}")
        self.n_bins = n_bins
        for name in ("bin_count", "bin_confidence", "bin_correct"):
            self.add_state(name, torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, chosen_mean_logps: Tensor, rejected_mean_logps: Tensor) -> None:
        """Args:
        chosen_mean_logps: ``ℓ_w``, the policy's log-prob of the chosen response divided by its token count.
            ``(n,)``.
        rejected_mean_logps: ``ℓ_l``, the same for the rejected response. ``(n,)``.
        """
        if chosen_mean_logps.shape != rejected_mean_logps.shape or chosen_mean_logps.dim() != 1:
            raise ValueError(
                f"expected two (n,) tensors, got {tuple(chosen_mean_logps.shape)} and "
                f"{tuple(rejected_mean_logps.shape)}"
            )
        chosen = chosen_mean_logps.detach().double()
        confidence = chosen.exp()
        correct = (chosen > rejected_mean_logps.detach().double()).double()
        bins = torch.floor(confidence * self.n_bins).long()
        inside = (bins >= 0) & (bins < self.n_bins)
        self.bin_count += torch.bincount(bins[inside], minlength=self.n_bins).double()
        self.bin_confidence.index_add_(0, bins[inside], confidence[inside])
        self.bin_correct.index_add_(0, bins[inside], correct[inside])
        self.total += chosen.numel()

    def compute(self) -> Tensor:
        gaps = (self.bin_correct - self.bin_confidence).abs()  # n_b · |accuracy_b − confidence_b|
        return gaps.sum() / self.total.clamp(min=1)


def without_final_end_token(input_ids: Tensor, response_mask: Tensor, end_ids: Collection[int]) -> Tensor:
    """``response_mask`` without each row's final response token where that token is one of ``end_ids``.

    Args:
        input_ids: ``(rows, time)`` token ids.
        response_mask: ``(rows, time)`` bool, true on response tokens (the end token included).
        end_ids: the end tokens (EOS, end of turn).

    Returns:
        ``(rows, time)`` bool; a row whose last response token is not an end token (a truncated response) keeps
        its mask.
    """
    mask = response_mask.bool()
    last = mask & (mask.long().cumsum(-1) == mask.long().sum(-1, keepdim=True))
    ends = torch.isin(input_ids, torch.as_tensor(list(end_ids), device=input_ids.device))
    return mask & ~(last & ends)
