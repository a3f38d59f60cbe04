"""The training order: a seeded shuffle per epoch, dealt to the data-parallel processes, and how far the run has got.

Lightning saves a data module's ``state_dict`` in every checkpoint; with the position in it, a run resumed from a
mid-epoch checkpoint continues with the very batch the interrupted run would have taken next, instead of
starting the epoch over in a new random order.

Optionally the shuffle is grouped by length (:func:`length_grouped`), so that each batch holds pairs of similar
length and little compute goes to padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Sized
from typing import Any

import pyarrow.compute as pc
import torch
from datasets import Dataset
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DistributedSampler


class TrainOrder(DistributedSampler):
    """Shuffles with the seed ``seed + epoch`` and deals the shuffle to ``num_replicas`` processes round-robin
    (exactly as :class:`~torch.utils.data.DistributedSampler`, which it is, so Lightning adds no sampler of its
    own), leaving out the pairs of the current epoch that the training loop has already consumed.

    One process takes the whole shuffle; ``n`` processes with per-process batch ``b`` see, step by step, the same
    global batches as one process with batch ``n·b`` when the pair count divides by ``n`` (otherwise the shuffle's
    first pairs are repeated to even the shares, as ``DistributedSampler`` does, and a warning counts them). The
    position is counted in pairs of the whole shuffle, so a run resumed on the same number of processes repeats the
    interrupted run's order exactly.

    Args:
        dataset: the training pairs.
        num_replicas: data-parallel processes.
        rank: this process's data-parallel rank.
        seed: seed of the shuffle.
        lengths: each pair's padded length; when given, the shuffle is grouped by length (:func:`length_grouped`)
            into global batches of ``batch_size · num_replicas`` pairs, windows of ``window`` global batches.
        batch_size: pairs per batch per process (only read when grouping by length).
        window: global batches per window sorted by length (only read when grouping by length).
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        lengths: Sequence[int] | None = None,
        batch_size: int = 1,
        window: int = 64,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if lengths is not None and len(lengths) != len(dataset):
            raise ValueError(f"lengths has {len(lengths)} entries for {len(dataset)} pairs")
        if batch_size < 1 or window < 1:
            raise ValueError(f"batch_size and window must be >= 1, got batch_size={batch_size}, window={window}")
        if repeated := self.total_size - len(dataset):
            rank_zero_warn(f"{len(dataset)} training pairs do not divide into {num_replicas} processes: {repeated} "
                           f"pair{'s are' if repeated > 1 else ' is'} repeated each epoch so that every process takes "
                           "the same steps, and the last global batch differs from one process's; a pair count "
                           f"divisible by {num_replicas} gives one process's batches exactly")
        self.lengths = lengths
        self.batch_size = batch_size
        self.window = window
        self.consumed = 0
        """Pairs of the current epoch's shuffle (all processes together) taken by the training loop."""

    def __iter__(self) -> Iterator[int]:
        """This process's share of the current epoch's shuffle, from the first pair not yet consumed."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        if self.lengths is not None:
            order = length_grouped(order, self.lengths, self.batch_size * self.num_replicas, self.window, generator)
        order += (order * math.ceil(self.total_size / len(order)))[: self.total_size - len(order)]  # even shares
        return iter(order[self.consumed + self.rank : self.total_size : self.num_replicas])

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` (Lightning calls this at each epoch start); the current epoch keeps its position."""
        if epoch != self.epoch:
            self.consumed = 0
        super().set_epoch(epoch)

    def advance(self, pairs: int) -> None:
        """Count a training batch of ``pairs`` on this process (and as many on each other process) as consumed."""
        self.consumed += pairs * self.num_replicas

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.consumed = state["epoch"], state["consumed"]


def length_grouped(
    order: list[int], lengths: Sequence[int], batch: int, window: int, generator: torch.Generator
) -> list[int]:
    """``order`` regrouped so that each run of ``batch`` consecutive pairs has pairs of similar length.

    Each window of ``window · batch`` consecutive pairs of the (shuffled) ``order`` is sorted by length, longest
    first, and cut into batches; the batches of all windows are then shuffled with ``generator``, except that the
    batch holding the longest pair comes first (a batch that does not fit in memory fails at the first step, not
    hours in) and a trailing partial batch stays last. Which pairs share a batch is random within a window, and
    the batch order is random over the epoch; only the padding goes.

    Args:
        order: a permutation of the pair indices.
        lengths: each pair's padded length (prompt + the longer response), indexed by pair.
        batch: pairs per (global) batch.
        window: batches per window sorted by length.
        generator: the shuffle's generator.
    """
    span = batch * window
    batches = []
    for start in range(0, len(order), span):
        ranked = sorted(order[start : start + span], key=lengths.__getitem__, reverse=True)
        batches += [ranked[i : i + batch] for i in range(0, len(ranked), batch)]
    tail = [batches.pop()] if batches and len(batches[-1]) < batch else []
    if not batches:
        return [i for group in tail for i in group]
    shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    longest = max(range(len(shuffled)), key=lambda b: lengths[shuffled[b][0]])
    shuffled.insert(0, shuffled.pop(longest))
    return [i for group in shuffled + tail for i in group]


def pair_lengths(pairs: Dataset) -> list[int]:
    """Each pair's padded length in a batch: its prompt plus the longer of its two responses."""
    table = pairs.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).with_format("arrow")[:]
    prompt, chosen, rejected = (pc.list_value_length(table[name]) for name in table.column_names)
    return pc.add(prompt, pc.max_element_wise(chosen, rejected)).to_pylist()
