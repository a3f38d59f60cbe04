"""The programmatic oracle reward of the controlled-generation task: a lexicon sentiment score.

It plays the role of the sentiment classifier in the IMDb controlled-sentiment experiment of the DPO and
f-DPO papers (Rafailov et al. 2023; Wang et al. 2023): it scores a response, never the prompt.

    s(y)  = Σ_i  w(y_i) · m_i                 (sum over the sentiment words y_i of the response)
    r(y)  = σ(s(y) / τ)  ∈ (0, 1)

``w`` is the word's lexicon weight (:mod:`lit_align.tasks.lexicon`, ±0.5 to ±2); ``m_i`` is the product of the
modifiers since the previous sentiment word or scope break (``.``, ``,``, ``but``, ``and``): an intensifier
multiplies by its factor (``very`` 1.5, ``somewhat`` 0.5), a negator by -0.5. The temperature ``τ`` sets how
quickly the reward saturates; with τ = 2 a single ``great`` gives 0.68, ``great`` and ``brilliant`` 0.85,
and a neutral response 0.5. The reward is graded, so a policy can trade reward against divergence from its
reference smoothly; sums of many positive words saturate at 1 rather than growing without bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from jsonargparse.typing import PositiveFloat
from torch import Tensor

from lit_align.online.reward import check_batch
from lit_align.tasks.lexicon import INTENSIFIERS, NEGATION_FACTOR, NEGATORS, SCOPE_BREAKS, WEIGHTS


def sentiment_score(text: str) -> float:
    """The raw lexicon score ``s(y)`` of a text (lower-cased, split on whitespace)."""
    score, modifier = 0.0, 1.0
    for word in text.lower().split():
        if word in WEIGHTS:
            score += WEIGHTS[word] * modifier
            modifier = 1.0
        elif word in INTENSIFIERS:
            modifier *= INTENSIFIERS[word]
        elif word in NEGATORS:
            modifier *= NEGATION_FACTOR
        elif word in SCOPE_BREAKS:
            modifier = 1.0
    return score


class SentimentOracle:
    """The oracle reward ``r(y) = σ(s(y) / τ)`` of responses, in (0, 1).

    Args:
        temperature: ``τ > 0``; smaller saturates sooner. The task's default is 2.
    """

    def __init__(self, temperature: PositiveFloat = 2.0) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got temperature={temperature}")
        self.temperature = temperature

    def reward(self, response: str) -> float:
        """The reward of one response."""
        return 1.0 / (1.0 + math.exp(-sentiment_score(response) / self.temperature))

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> Tensor:
        """The rewards of a batch of responses, float64 (a :class:`~lit_align.online.RewardFn`: ``prompts[i]`` is
        the prompt of ``responses[i]``; the oracle scores the response alone)."""
        check_batch(prompts, responses)
        return torch.tensor([self.reward(response) for response in responses], dtype=torch.float64)
