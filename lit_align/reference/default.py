"""The reference a run gets when it names none."""

from __future__ import annotations

from lit_align.models.policy import PolicySpec
from lit_align.reference.adapter import DisabledAdapter
from lit_align.reference.base import ReferenceProvider
from lit_align.reference.frozen import FrozenCopy


def default_reference(policy: PolicySpec) -> ReferenceProvider:
    """The adapter-disabled base for a LoRA policy, otherwise a frozen copy of the initial policy."""
    return DisabledAdapter() if policy.lora is not None else FrozenCopy()
