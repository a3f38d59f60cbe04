"""The reward protocol: ``reward_fn(prompts, responses) -> Tensor``, one float per response.

    r_i = reward_fn(prompts, responses)[i]      the reward of ``responses[i]`` as an answer to ``prompts[i]``

``prompts`` and ``responses`` have the same length (``prompts[i]`` repeated for each of its samples); the result
is a 1-D floating tensor of that length, on any device, with no gradient. A prompt is the user's text (what a
prompts-only data module reads from the prompt column, or the last user turn), a response the sampled text that
follows it. Each implementation renders the two as its own model expects:

- :class:`~lit_align.tasks.SentimentOracle`: the controlled task's oracle, which scores the response alone;
- :class:`~lit_align.online.SequenceClassifierReward`: any ``AutoModelForSequenceClassification`` checkpoint (a
  hub reward model, or one :class:`~lit_align.online.RewardModel` trained), with its own tokenizer and chat
  template.

In YAML a reward function is given by ``class_path``, as every other component.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class RewardFn(Protocol):
    """A reward function: ``reward_fn(prompts, responses)`` gives the reward of each response (see the module
    docstring)."""

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> Any:
        """A 1-D floating tensor of ``len(responses)`` rewards. (Annotated ``Any`` here: jsonargparse reads a
        protocol whose ``__call__`` returns a class as a factory of that class, and would refuse every
        ``class_path`` that is not a ``Tensor``.)"""


def check_batch(prompts: Sequence[str], responses: Sequence[str]) -> None:
    """Refuse a call whose prompts and responses do not pair up one to one."""
    if isinstance(prompts, str) or isinstance(responses, str):
        raise TypeError("reward_fn takes lists of prompts and responses, not a single string")
    if len(prompts) != len(responses):
        raise ValueError(f"reward_fn needs one prompt per response, got {len(prompts)} prompts for "
                         f"{len(responses)} responses (repeat each prompt once per sample)")


def checked_rewards(rewards: Tensor, count: int, source: object = "reward_fn") -> Tensor:
    """``rewards`` as the protocol promises them (1-D, floating, ``count`` values, all finite), detached; else a
    ``ValueError`` naming ``source``."""
    if not isinstance(rewards, Tensor):
        raise TypeError(f"{source!r} returned a {type(rewards).__name__}, not a tensor of rewards")
    if rewards.dim() != 1 or rewards.numel() != count or not torch.is_floating_point(rewards):
        raise ValueError(f"{source!r} returned rewards of shape {tuple(rewards.shape)} and dtype {rewards.dtype}; "
                         f"expected a 1-D floating tensor of {count} rewards, one per response")
    if not bool(torch.isfinite(rewards).all()):
        raise ValueError(f"{source!r} returned a non-finite reward: {rewards.tolist()}")
    return rewards.detach()
