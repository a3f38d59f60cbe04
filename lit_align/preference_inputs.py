"""What an objective needs from one batch, given the policy's hidden states: the module's data path past the policy.

Each :data:`~lit_align.objectives.base.Need` is computed only when asked for, each from as few LM-head passes as
the needs allow: the policy's summed log-probs, and with them the per-token ones (``token_logps``, LD-DPO) and its
``Σ_t log Σ_v π_θ(v)²`` (``log_collision``, WPO) from the same pass; the reference's summed, per-token or
token-level-KL quantities from one reference forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from lit_align.models.logprobs import sequence_logps
from lit_align.models.token_kl import sequence_logps_and_kl
from lit_align.models.token_logps import response_logps
from lit_align.objectives.base import Need, PreferenceInputs

if TYPE_CHECKING:
    from lit_align.reference import ReferenceProvider


def pair_inputs(
    batch: dict[str, Tensor],
    needs: frozenset[Need],
    hidden: Tensor,
    head: nn.Module,
    reference: ReferenceProvider | None,
    chunk_size: int,
) -> PreferenceInputs:
    """The objective's inputs (SAE features apart) for ``batch`` (a layout view, rows chosen then rejected),
    from the policy's final ``hidden`` states at its rows and its LM ``head``."""
    ids, mask = batch["input_ids"], batch["response_mask"]
    per_token, collision = "token_logps" in needs, "log_collision" in needs
    policy = response_logps(hidden, head, ids, mask, chunk_size, collision) if per_token or collision else None
    ref_logps = seq_kl = ref_tokens = None
    if "token_kl" in needs:
        ref_hidden, ref_head = reference.final_hidden(batch)
        logps, ref_logps, seq_kl = sequence_logps_and_kl(hidden, head, ref_hidden, ref_head, ids, mask, chunk_size)
        if per_token:
            with torch.no_grad():
                ref_tokens = response_logps(ref_hidden.detach(), ref_head, ids, mask, chunk_size).per_token
    else:
        logps = policy.sums if policy is not None else sequence_logps(hidden, head, ids, mask, chunk_size)
        if per_token:
            ref_logps, ref_tokens = reference.token_logps(batch)
        elif "reference_logps" in needs:
            ref_logps = reference.sequence_logps(batch)
    lengths = mask[:, 1:].sum(-1).float()
    inputs = PreferenceInputs(*logps.chunk(2), *lengths.chunk(2), *_halves(ref_logps), *_halves(seq_kl))
    if per_token:
        inputs.policy_chosen_token_logps, inputs.policy_rejected_token_logps = policy.per_token.chunk(2)
        inputs.ref_chosen_token_logps, inputs.ref_rejected_token_logps = ref_tokens.chunk(2)
    if collision:
        inputs.chosen_log_collision, inputs.rejected_log_collision = policy.log_collision.chunk(2)
    return inputs


def _halves(values: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """Chosen and rejected rows of ``values``, or two ``None``."""
    return (None, None) if values is None else values.chunk(2)
