"""Iterative rounds: sample a whole round's pairs from the policy as it stands, train on them, repeat.

This is iterative DPO (Xiong et al. 2024, "Iterative Preference Learning from Human Feedback",
https://arxiv.org/abs/2312.11456, Algorithm 1 with a batch of prompts per iteration; Dong et al. 2024, "RLHF
Workflow", https://arxiv.org/abs/2405.07863; the rounds of Llama 3's post-training), with any objective. A round
is one epoch of Lightning's fit loop: with ``trainer.reload_dataloaders_every_n_epochs: 1`` the data module builds
each epoch's training dataloader afresh, and for an iterative :class:`~lit_align.online.on_policy.OnPolicyModule`
(``iterative: true``) that dataloader holds the pairs :func:`sample_round` makes:

1. every prompt batch of the epoch, in the data module's seeded order for that epoch, is sampled ``k`` times from
   the policy (no optimizer step happens in between, so every pair of round ``r`` comes from the weights at its
   start), under the seed ``(sampling_seed, round, batch, rank, ROUND_STREAM)``;
2. the rewards are paired as in online training (:class:`~lit_align.online.PairBuilder`);
3. under DDP, the processes' pairs are gathered in rank order, so every process holds the whole round, and the
   data module's training order deals it to the processes as it deals offline pairs.

The round's pairs go into every checkpoint (:meth:`SampledRound.state_dict`, flat token tensors), so a run resumed
mid-round trains on the pairs the interrupted run sampled, not on new ones from weights that have moved; a run
resumed at a round's end samples the next round from the same weights the uninterrupted run had.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lit_align.online.prompts import prompt_ids
from lit_align.online.rollout import step_seed, token_pairs

if TYPE_CHECKING:
    from lit_align.online.on_policy import OnPolicyModule

FIELDS = ("prompt_ids", "chosen_ids", "rejected_ids")
ROUND_STREAM = 1
"""The last seed counter of a round's sampling: its streams differ from fully online sampling's."""


@dataclass
class SampledRound:
    """Round ``index``'s pairs (the token rows :class:`~lit_align.data.PairCollator` batches), all processes'."""

    index: int
    pairs: list[dict[str, Any]]

    def state_dict(self) -> dict[str, Tensor]:
        """The round as tensors (checkpoints are read weights-only): each field's tokens end to end, and lengths."""
        state = {"index": torch.tensor(self.index),
                 "example_key": torch.tensor([pair["example_key"] for pair in self.pairs], dtype=torch.long)}
        for field in FIELDS:
            state[field] = torch.tensor([t for pair in self.pairs for t in pair[field]], dtype=torch.long)
            state[f"{field}_lengths"] = torch.tensor([len(pair[field]) for pair in self.pairs], dtype=torch.long)
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> SampledRound:
        columns = {field: [ids.tolist() for ids in state[field].split(state[f"{field}_lengths"].tolist())]
                   for field in FIELDS}
        keys = state["example_key"].tolist()
        pairs = [{**{field: columns[field][i] for field in FIELDS}, "example_key": keys[i]} for i in range(len(keys))]
        return cls(int(state["index"]), pairs)


def sample_round(module: OnPolicyModule, prompts: Iterable[dict[str, Any]], index: int) -> SampledRound:
    """Round ``index``: ``prompts`` (this process's batches of the epoch) sampled, scored and paired by ``module``,
    gathered over the processes; its statistics logged under ``online/round/`` and in one line."""
    start, pairs, rewards, gaps, ended, lengths, clock = time.perf_counter(), [], [], [], [], [], [0.0, 0.0]
    for batch_idx, batch in enumerate(prompts):
        batch = move_data_to_device(batch, module.device)
        seed = step_seed(module.sampling_seed, index, batch_idx, module.global_rank, ROUND_STREAM)
        rollout, scores = module.rollout(batch, seed)
        clock = [clock[0] + module.clock["generate"], clock[1] + module.clock["score"]]
        found = module.pair_builder(scores)
        pairs += token_pairs(prompt_ids(batch), rollout, found)
        rewards += scores.flatten().tolist()
        gaps += found.gap.tolist()
        ended += rollout.ended.tolist()
        lengths += rollout.lengths.tolist()
    seconds = time.perf_counter() - start
    shares = gathered(module, (pairs, rewards, gaps, ended, lengths))
    pairs, rewards, gaps, ended, lengths = ([x for share in shares for x in share[i]] for i in range(5))
    if not pairs:
        raise ValueError(f"round {index} made no pair from {len(rewards)} samples: every prompt's responses tie "
                         "(or lie within the pair margin); nothing to train on")
    values = {"round": float(index), "pairs": float(len(pairs)), "samples": float(len(rewards)),
              "reward": statistics.fmean(rewards), "pair_gap": statistics.fmean(gaps),
              "ended": statistics.fmean(ended), "response_tokens": statistics.fmean(lengths),
              "time/generate": clock[0], "time/score": clock[1], "time/round": seconds,
              "samples_per_second": len(rewards) / seconds}
    for logger in module.trainer.loggers:
        logger.log_metrics({f"online/round/{name}": value for name, value in values.items()},
                           step=module.trainer.global_step)
    rank_zero_info(f"round {index}: {len(rewards)} samples in {seconds:.1f} s, {len(pairs)} pairs, mean reward "
                   f"{values['reward']:.4g}")
    return SampledRound(index, pairs)


def gathered(module: OnPolicyModule, share: Any) -> list[Any]:
    """Every process's ``share``, in rank order (this process's alone without a process group)."""
    if module.trainer.world_size == 1:
        return [share]
    shares: list[Any] = [None] * module.trainer.world_size
    torch.distributed.all_gather_object(shares, share)
    return shares
