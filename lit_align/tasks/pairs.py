"""Preference pairs from sampled continuations, labelled by the oracle.

For each prompt the best- and worst-scored of its samples become ``chosen`` and ``rejected``; a prompt whose
samples all score the same is a tie and gives no pair (ties are counted). Rows are written as JSON lines
``{"prompt", "chosen", "rejected", "chosen_reward", "rejected_reward"}`` (the rewards for analysis only).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from lit_align.tasks.oracle import SentimentOracle


@dataclass(frozen=True)
class PairStats:
    """What pair labelling saw: reward statistics of all samples, and how many prompts tied."""

    n_prompts: int
    n_pairs: int
    n_ties: int
    sample_reward_mean: float
    sample_reward_std: float
    mean_margin: float
    """Mean ``chosen_reward - rejected_reward`` over the pairs."""

    @property
    def tie_fraction(self) -> float:
        return self.n_ties / max(1, self.n_prompts)


def label_pairs(
    prompts: Sequence[str], samples: Sequence[Sequence[str]], oracle: SentimentOracle
) -> tuple[list[dict], PairStats]:
    """Best-vs-worst pairs of each prompt's samples (``samples[i]`` belongs to ``prompts[i]``)."""
    if len(prompts) != len(samples):
        raise ValueError(f"got {len(prompts)} prompts but {len(samples)} sample lists")
    rows, all_rewards = [], []
    for prompt, continuations in zip(prompts, samples, strict=True):
        if len(continuations) < 2:
            raise ValueError("each prompt needs at least two samples to make a pair")
        rewards = oracle([prompt] * len(continuations), continuations).tolist()
        all_rewards.extend(rewards)
        best = max(range(len(rewards)), key=rewards.__getitem__)
        worst = min(range(len(rewards)), key=rewards.__getitem__)
        if rewards[best] == rewards[worst]:
            continue
        rows.append(
            {
                "prompt": prompt,
                "chosen": continuations[best],
                "rejected": continuations[worst],
                "chosen_reward": rewards[best],
                "rejected_reward": rewards[worst],
            }
        )
    stats = PairStats(
        n_prompts=len(prompts),
        n_pairs=len(rows),
        n_ties=len(prompts) - len(rows),
        sample_reward_mean=statistics.fmean(all_rewards) if all_rewards else float("nan"),
        sample_reward_std=statistics.pstdev(all_rewards) if all_rewards else float("nan"),
        mean_margin=statistics.fmean(r["chosen_reward"] - r["rejected_reward"] for r in rows) if rows else 0.0,
    )
    return rows, stats
