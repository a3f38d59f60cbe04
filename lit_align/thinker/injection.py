"""Injection of thoughts into the base's input embeddings, by slot, and the control thoughts."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

ThoughtMode = Literal["generated", "placeholder", "shuffled"]
"""``generated``: the generator's thoughts; ``placeholder``: none injected (the base sees its placeholder
tokens); ``shuffled``: each example gets another example's thoughts (the batch rolled by one; a control)."""


def gather_positions(hidden: Tensor, positions: Tensor) -> Tensor:
    """``hidden[b, positions[b, j]]``. ``hidden``: ``(batch, time, dim)``; ``positions``: ``(batch, n)`` or
    ``(batch,)``; returns ``(batch, n, dim)`` or ``(batch, dim)``."""
    flat = positions if positions.dim() == 2 else positions[:, None]
    picked = hidden.gather(1, flat[..., None].expand(-1, -1, hidden.shape[-1]))
    return picked if positions.dim() == 2 else picked[:, 0]


def inject(embeddings: Tensor, slots: Tensor, thoughts: Tensor) -> Tensor:
    """``embeddings`` with ``embeddings[b, slots[b, j]] = thoughts[b, j]`` (out of place, differentiable in the
    thoughts). Shapes ``(batch, time, hidden)``, ``(batch, N)``, ``(batch, N, hidden)``."""
    index = slots[..., None].expand(-1, -1, embeddings.shape[-1])
    return embeddings.scatter(1, index, thoughts.to(embeddings.dtype))


def control(thoughts: Tensor, mode: ThoughtMode, shift: int = 1) -> Tensor | None:
    """The thoughts to inject under ``mode`` (None: inject nothing); ``shift``: how far ``shuffled`` rolls the
    batch (the number of copies of each example when the batch repeats them)."""
    if mode == "placeholder":
        return None
    if mode == "shuffled":
        if len(thoughts) <= shift:
            raise ValueError("shuffled thoughts need batches of at least 2 examples")
        return thoughts.roll(shift, dims=0)
    return thoughts
