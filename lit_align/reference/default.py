"""The reference a run gets when it names none."""

from __future__ import annotations

from lit_align.models.adapters import adapter_config, base_changing_init
from lit_align.models.policy import PolicySpec
from lit_align.reference.adapter import DisabledAdapter
from lit_align.reference.base import ReferenceProvider
from lit_align.reference.frozen import FrozenCopy


def default_reference(policy: PolicySpec) -> ReferenceProvider:
    """The adapter-disabled base for an adapted policy, otherwise (or where the adapter's initialisation changes
    the base: PiSSA, OLoRA) a frozen copy of the initial policy."""
    if policy.adapted and base_changing_init(adapter_config(policy)) is None:
        return DisabledAdapter()
    return FrozenCopy()
