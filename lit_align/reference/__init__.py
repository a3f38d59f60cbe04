"""Reference providers behind one interface: a frozen copy, the adapter-disabled base, an offline store."""

from lit_align.reference.adapter import DisabledAdapter
from lit_align.reference.base import OnlineReference, ReferenceProvider
from lit_align.reference.frozen import FrozenCopy
from lit_align.reference.store import OfflineStore

__all__ = ["DisabledAdapter", "FrozenCopy", "OfflineStore", "OnlineReference", "ReferenceProvider"]
