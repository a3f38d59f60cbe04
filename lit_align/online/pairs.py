"""Preference pairs from ``k ≥ 2`` scored responses per prompt.

For prompt ``p`` with responses ``y_1 … y_k`` and rewards ``r_1 … r_k``, a pair ``(y_i ≻ y_j)`` is kept when its
reward gap exceeds the margin ``m ≥ 0``:  ``r_i − r_j > m``.

- ``best_vs_worst``: one pair per prompt, the best response against the worst, ``i = argmax r``, ``j = argmin r``
  (the first one among equals, as the controlled task's :func:`~lit_align.tasks.pairs.label_pairs` picks); the
  pairs of Self-Rewarding LMs (Yuan et al. 2024, https://arxiv.org/abs/2401.10020) and of iterative DPO with a
  reward model (Dong et al. 2024, https://arxiv.org/abs/2405.07863); TRL's ``OnlineDPOTrainer`` with ``k = 2``.
- ``all_above_margin``: every ordered pair ``(i, j)`` with ``r_i − r_j > m``: up to ``k(k−1)/2`` pairs per prompt
  (the InstructGPT comparisons of ``K`` ranked responses, Ouyang et al. 2022), in the order prompt, ``i``, ``j``.

A prompt whose responses all tie (or whose gaps are all within the margin) gives no pair. With ``k = 2`` both rules
give the same single pair. Ties never pair with each other, since ``0 > m`` never holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lit_align.errors import ConfigError

PairRule = Literal["best_vs_worst", "all_above_margin"]


@dataclass(frozen=True)
class ScoredPairs:
    """Pairs as indices into the responses of ``P`` prompts laid out prompt-major (response ``j`` of prompt ``p``
    is row ``p · k + j``); every tensor ``(pairs,)``."""

    prompt: Tensor
    """The prompt of each pair."""
    chosen: Tensor
    """The preferred response's row."""
    rejected: Tensor
    """The other response's row."""
    gap: Tensor
    """``r_chosen − r_rejected`` (> margin)."""

    def __len__(self) -> int:
        return len(self.prompt)


@dataclass
class PairBuilder:
    """Builds pairs from rewards by ``rule`` (module docstring)."""

    rule: PairRule = "best_vs_worst"
    """``best_vs_worst``: one pair per prompt; ``all_above_margin``: every pair whose reward gap exceeds ``margin``."""
    margin: float = 0.0
    """Keep a pair only when ``r_chosen − r_rejected > margin`` (``≥ 0``; 0 drops ties only)."""

    def __post_init__(self) -> None:
        if self.rule not in PairRule.__args__:
            raise ConfigError("pairs.rule", self.rule, f"one of {PairRule.__args__}")
        if not self.margin >= 0:
            raise ConfigError("pairs.margin", self.margin, "a reward gap >= 0 (0 drops ties only)")

    def __call__(self, rewards: Tensor) -> ScoredPairs:
        """The pairs of ``rewards``, shape ``(prompts, k)`` with ``k ≥ 2``, all finite."""
        if rewards.dim() != 2 or rewards.shape[1] < 2:
            raise ValueError(f"rewards must have shape (prompts, k) with k >= 2 responses per prompt, got "
                             f"{tuple(rewards.shape)}")
        if not bool(torch.isfinite(rewards).all()):
            raise ValueError("rewards must be finite to be compared; got a NaN or an infinity")
        rewards = rewards.detach()
        k = rewards.shape[1]
        if self.rule == "best_vs_worst":
            best, worst = rewards.argmax(dim=1), rewards.argmin(dim=1)  # the first index among equal values
            gap = rewards.gather(1, best[:, None])[:, 0] - rewards.gather(1, worst[:, None])[:, 0]
            prompt = torch.nonzero(gap > self.margin)[:, 0]
            best, worst, gap = best[prompt], worst[prompt], gap[prompt]
        else:
            gaps = rewards[:, :, None] - rewards[:, None, :]  # gaps[p, i, j] = r_i - r_j
            prompt, best, worst = torch.nonzero(gaps > self.margin, as_tuple=True)  # row-major: p, then i, then j
            gap = gaps[prompt, best, worst]
        return ScoredPairs(prompt, prompt * k + best, prompt * k + worst, gap)


def pair_rows(prompts: Sequence[str], responses: Sequence[str], rewards: Tensor, pairs: ScoredPairs) -> list[dict]:
    """The pairs as rows of the ``explicit`` layout (``prompt``, ``chosen``, ``rejected``, with ``chosen_reward``
    and ``rejected_reward``), as :class:`~lit_align.data.PreferenceDataModule` reads them; ``responses`` and
    ``rewards`` prompt-major, ``rewards`` of shape ``(prompts, k)``."""
    flat = rewards.detach().reshape(-1).tolist()
    if len(responses) != len(flat) or len(prompts) != rewards.shape[0]:
        raise ValueError(f"{len(prompts)} prompts and {len(responses)} responses do not match rewards of shape "
                         f"{tuple(rewards.shape)}")
    return [{"prompt": prompts[p], "chosen": responses[win], "rejected": responses[lose], "chosen_reward": flat[win],
             "rejected_reward": flat[lose]}
            for p, win, lose in zip(pairs.prompt.tolist(), pairs.chosen.tolist(), pairs.rejected.tolist(), strict=True)]
