"""The trained-placeholder control: thought slots trained without a generator, the same for every question.

The untrained placeholder control (``thoughts: placeholder``) puts a base that was pre-trained only with hints in
its slots in front of empty slots it never saw: its accuracy (2% on the built-in task, below the 1/7 chance
level) is a floor that flatters every comparison against it. :class:`NoGenerator` gives the fair floor: the same
module, data, losses, optimizer and steps as a generator row, with the generator replaced by a lookup of each
position's own (frozen) token embedding — no attention, no position, nothing of the question. A thought slot's
hidden state is then the embedding of its query token ``⟨t_j⟩`` and its thought is ``W e(⟨t_j⟩) + b``: a vector
per slot, trained from the placeholder embedding (``thought_init="placeholder"``), identical for every question.
What the base answers with it is the best a frozen base does when the slots carry no question-specific content;
a generator shows that its thoughts carry the question by beating it.
"""

from __future__ import annotations

from torch import Tensor, nn

from lit_align.thinker.generator import ThoughtGenerator


class NoGenerator(ThoughtGenerator):
    """No generator: each position's hidden state is its own token's frozen base embedding, so the thoughts, read
    at the fixed query tokens ``⟨t_0⟩…⟨t_{N−1}⟩``, are the projection's trained per-slot vectors, independent of
    the question. It has no parameters: only the projection trains."""

    def __init__(self) -> None:
        super().__init__()
        self._embedding: list[nn.Module] = []  # the base's, not registered here (not trained, not saved twice)

    def bind(self, base: nn.Module) -> None:
        self.hidden_size = base.config.hidden_size
        self._embedding = [base.get_input_embeddings()]

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self._embedding[0](input_ids).detach()
