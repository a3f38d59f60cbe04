"""Evaluation metrics of aligned policies, as torchmetrics that accumulate over batches and processes.

The three papers judge an objective by the trade-off between reward and divergence from the reference (the
reward-vs-KL frontier of the IMDb controlled-sentiment experiment), by the diversity of its samples, and by
calibration. Each metric below keeps sums (or, where a sum cannot be merged, the raw items) as its state, so
its value over several processes is the value over all of their inputs together:

- :class:`SequenceKL`: ``KL(p ‖ q) ≈ mean_i [log p(y_i|x_i) - log q(y_i|x_i)]`` over samples ``y_i ~ p``.
- :class:`TokenEntropy`: mean predictive entropy per response token.
- :class:`DistinctN`: distinct-n, distinct n-grams over all n-grams of a set of samples.
- :class:`WinRate`: how often the policy's sample outscores the reference's, ties counting one half.
- :class:`PreferenceCalibrationError`: expected calibration error (10 bins) of the implicit reward model's
  preference probability ``σ(r(x, y_w) - r(x, y_l))`` on held-out pairs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from jsonargparse.typing import PositiveInt
from torch import Tensor
from torchmetrics import MeanMetric, Metric, SumMetric
from torchmetrics.classification import MulticlassCalibrationError


class _SumRatio(Metric):
    """A ratio of two sums, each summed over processes."""

    is_differentiable = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("numerator", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("denominator", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _accumulate(self, numerator: Tensor, denominator: Tensor | float) -> None:
        self.numerator += numerator.detach().double().sum()
        self.denominator += torch.as_tensor(denominator, dtype=torch.float64, device=self.device).sum()

    def compute(self) -> Tensor:
        return self.numerator / self.denominator


class SequenceKL(_SumRatio):
    """Monte-Carlo estimate of a sequence-level KL divergence from samples of its first argument::

        KL(p ‖ q) = E_x E_{y ~ p(·|x)} [log p(y|x) - log q(y|x)]  ≈  (1/n) Σ_i [log p(y_i|x_i) - log q(y_i|x_i)]

    Samples of the policy give the reverse ``KL(π_θ ‖ π_ref)``, the divergence the KL-regularised RLHF objective
    (and DPO) constrains and the x-axis of the papers' reward-vs-KL frontier; samples of the reference give the
    forward ``KL(π_ref ‖ π_θ)``. Each estimate is unbiased; a single one may be negative.
    """

    higher_is_better = False

    def update(self, sample_logps: Tensor, other_logps: Tensor) -> None:
        """Args:
        sample_logps: ``log p(y_i|x_i)`` summed over each sample's tokens, under the model that drew it. ``(n,)``.
        other_logps: ``log q(y_i|x_i)`` of the same samples under the other model. ``(n,)``.
        """
        if sample_logps.shape != other_logps.shape:
            raise ValueError(f"log-prob shapes differ: {tuple(sample_logps.shape)} vs {tuple(other_logps.shape)}")
        self._accumulate(sample_logps - other_logps, sample_logps.numel())


def token_entropy(logits: Tensor) -> Tensor:
    """Entropy ``H(π) = -Σ_v π_v log π_v`` of each softmax distribution over the last dimension, in fp32;
    vocabulary entries of probability zero contribute zero."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -torch.special.xlogy(log_probs.exp(), log_probs.exp()).sum(-1)


class TokenEntropy(_SumRatio):
    """Mean predictive entropy per token: ``(1/T) Σ_{i,t} H(π(·|x_i, y_i,<t))`` over the ``T`` response positions
    of a set of samples; higher means a more spread-out next-token distribution (a diversity measure)."""

    higher_is_better = None

    def update(self, logits: Tensor, mask: Tensor | None = None) -> None:
        """Args:
        logits: next-token logits, ``(..., vocab)``.
        mask: ``(...)`` bool, true at the positions to count (response tokens); unset counts every position.
        """
        entropy = token_entropy(logits)
        if mask is None:
            self._accumulate(entropy, entropy.numel())
            return
        if mask.shape != entropy.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match the logits' {tuple(entropy.shape)}")
        self._accumulate(entropy[mask], mask.sum())


class WinRate(_SumRatio):
    """Win rate of the policy against the reference: the fraction of paired samples (same prompt) where the
    policy's reward is higher, a tie counting one half."""

    higher_is_better = True

    def update(self, policy_rewards: Tensor, reference_rewards: Tensor) -> None:
        """Args:
        policy_rewards: reward of each policy sample. ``(n,)``.
        reference_rewards: reward of the reference sample for the same prompt, paired with it. ``(n,)``.
        """
        if policy_rewards.shape != reference_rewards.shape:
            raise ValueError(
                f"reward shapes differ: {tuple(policy_rewards.shape)} vs {tuple(reference_rewards.shape)}"
            )
        wins = (policy_rewards > reference_rewards).double() + 0.5 * (policy_rewards == reference_rewards).double()
        self._accumulate(wins, policy_rewards.numel())


def ngram_ids(words: Sequence[str], n: int) -> list[int]:
    """A stable 63-bit id of every ``n``-gram of ``words`` (the same on every process, unlike ``hash``)."""
    grams = (" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    return [int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") >> 1 for g in grams]


class DistinctN(Metric):
    """distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models"):
    the number of distinct word n-grams over the total number of n-grams, across all samples seen.

    Distinct counts do not add up over processes, so the state is the list of n-gram ids (concatenated over
    processes), and the distinct ones are counted at :meth:`compute`. Words are whitespace-separated.

    Args:
        n: the n-gram order (1: distinct words).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, n: PositiveInt = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        if not n >= 1:
            raise ValueError(f"n must be >= 1, got n={n}")
        self.n = n
        self.add_state("ngrams", [], dist_reduce_fx="cat")

    def update(self, texts: Sequence[str]) -> None:
        ids = [i for text in texts for i in ngram_ids(text.split(), self.n)]
        self.ngrams.append(torch.tensor(ids, dtype=torch.long, device=self.device))

    def compute(self) -> Tensor:
        ngrams = torch.cat(self.ngrams) if isinstance(self.ngrams, list) else self.ngrams
        if ngrams.numel() == 0:
            return torch.tensor(0.0, device=self.device)
        return torch.tensor(ngrams.unique().numel() / ngrams.numel(), device=self.device)


class PreferenceCalibrationError(MulticlassCalibrationError):
    """Expected calibration error (Guo et al. 2017) of the implicit reward model's preference probability.

    For a pair with reward margin ``m = r(x, y_w) - r(x, y_l)`` (the objective's chosen minus rejected reward,
    which already carries β), the model's probability that the chosen response wins is ``p = σ(m)``. The model
    picks the chosen response when ``p > 1/2``, with confidence ``c = max(p, 1 - p)``, and is right when it
    picks it. With ``B`` equal-width confidence bins over [0, 1],

        ECE = Σ_b (n_b / n) · | accuracy_b - mean confidence_b |

    This is torchmetrics' :class:`~torchmetrics.classification.MulticlassCalibrationError` over the two
    outcomes, with probabilities ``(1 - p, p)`` and label "chosen". (The binary form, ``p`` against a label
    that is always 1, would reduce to ``1 - mean(p)``: it rewards confidence, not calibration.) A margin of
    exactly zero counts as a wrong pick, as the reward accuracy does.

    Args:
        n_bins: number of confidence bins; 10 as in the f-DPO paper.
    """

    def __init__(self, n_bins: PositiveInt = 10, **kwargs) -> None:
        super().__init__(num_classes=2, n_bins=n_bins, norm="l1", **kwargs)

    def update(self, margins: Tensor) -> None:
        """Args:
        margins: ``r(x, y_w) - r(x, y_l)`` per pair. ``(n,)``.
        """
        p = torch.sigmoid(margins.detach().float())
        super().update(torch.stack([1 - p, p], dim=-1), torch.ones_like(p, dtype=torch.long))


def standard_error(values: Tensor, device: torch.device) -> float:
    """Standard error of the mean of ``values`` over all processes: ``sqrt((E[v²] - E[v]²) / (n - 1))``."""
    count = reduced(SumMetric(), torch.ones_like(values), device=device)
    return standard_deviation(values, device) / max(1.0, count - 1) ** 0.5


def standard_deviation(values: Tensor, device: torch.device) -> float:
    """Population standard deviation of ``values`` over all processes: ``sqrt(E[v²] - E[v]²)``."""
    values = values.double()
    mean = reduced(MeanMetric(), values, device=device)
    mean_square = reduced(MeanMetric(), values.square(), device=device)
    return max(0.0, mean_square - mean**2) ** 0.5


def reduced(metric: Metric, *inputs: Tensor, device: torch.device) -> float:
    """Update a fresh metric with this process's inputs and compute it over all processes (on ``device``, where
    the processes' collectives run)."""
    metric = metric.to(device)
    metric.update(*(x.to(device) for x in inputs))
    return float(metric.compute())
