"""The offline reference store: per-response reference log-probs precomputed once, so no reference model
sits in memory during training.

A store is a directory holding ``reference.safetensors`` with, per pair, its ``example_key`` (the hash of its
token ids), the summed reference log-probs and response lengths of chosen and rejected, and a fingerprint in
the file's metadata: the reference weights, the tokenizer, the length settings and the data it covers.
Training refuses a store whose fingerprint does not match the run, naming what differs.

For an objective that reads SAE features (FPO), the store also holds each response's pooled reference features,
sparse (:mod:`lit_align.reference.sparse`: ``{side}_feature_offsets``, ``{side}_feature_indices``,
``{side}_feature_values`` for side ``chosen`` and ``rejected``), and the fingerprint names the SAE (its weights,
layer and width); a run with another SAE is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor, nn

from lit_align.errors import ConfigError
from lit_align.files import save_safetensors
from lit_align.objectives.base import Need
from lit_align.reference.base import ReferenceProvider
from lit_align.reference.fingerprint import data_fingerprint, run_fingerprint, sae_fingerprint, source_fingerprint
from lit_align.reference.sparse import dense_rows, offsets_of, select_rows

if TYPE_CHECKING:
    from lit_align.models.policy import PolicySpec
    from lit_align.sae.features import SAEFeatures

STORE_FILE = "reference.safetensors"
_NOT_STORED = {"token_kl": "the reference's full next-token distributions (token_kl)",
               "token_logps": "per-token log-probs (token_logps, read by LD-DPO's ld_alpha)"}
STORE_COLUMNS = ("example_key", "chosen_logps", "rejected_logps", "chosen_lengths", "rejected_lengths")
SIDES = ("chosen", "rejected")


def write_store(path: str | Path, columns: dict[str, Tensor], fingerprint: dict[str, Any],
                manifest: dict[str, Any] | None = None) -> Path:
    """Write a store (deduplicating keys, as distributed predict pads with repeats); returns the file.

    ``columns`` holds :data:`STORE_COLUMNS`, one value per pair, and optionally the pooled reference features
    as ``{side}_feature_counts`` (one per pair), ``{side}_feature_indices`` and ``{side}_feature_values`` (the
    non-zeros, pair by pair; :func:`~lit_align.reference.sparse.sparse_rows`), stored as CSR columns. The
    ``manifest`` of the run that computed it (:mod:`lit_align.identity.manifest`) is kept beside the fingerprint."""
    keys, first = _first_occurrences(columns["example_key"])
    tensors = {name: columns[name][first].contiguous() for name in STORE_COLUMNS}
    if "chosen_feature_counts" in columns:
        for side in SIDES:
            offsets, indices, values = select_rows(
                offsets_of(columns[f"{side}_feature_counts"]),
                columns[f"{side}_feature_indices"],
                columns[f"{side}_feature_values"],
                first,
            )
            tensors.update({f"{side}_feature_offsets": offsets, f"{side}_feature_indices": indices.contiguous(),
                            f"{side}_feature_values": values.contiguous()})

    fingerprint = {**fingerprint, "data": data_fingerprint(keys)}
    Path(path).mkdir(parents=True, exist_ok=True)
    metadata = {"fingerprint": json.dumps(fingerprint), "manifest": json.dumps(manifest, default=str)}
    return save_safetensors(tensors, Path(path) / STORE_FILE, metadata=metadata)


def _first_occurrences(keys: Tensor) -> tuple[Tensor, Tensor]:
    unique, inverse = torch.unique(keys, return_inverse=True)
    first = torch.full((len(unique),), len(keys), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(keys)), reduce="amin"
    )
    return unique, first


def read_store(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The columns and fingerprint of a store; a missing, truncated or corrupted file is a clear error."""
    file = Path(path) / STORE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no reference store at {file}; create it with `lit-align precompute`")
    try:
        with safe_open(str(file), framework="pt") as handle:
            fingerprint = json.loads((handle.metadata() or {})["fingerprint"])
        columns = load_file(str(file))
    except (SafetensorError, ValueError, KeyError, OSError) as error:
        raise ValueError(f"the reference store {file} is truncated or corrupted ({error}); rebuild it") from error
    missing = [name for name in STORE_COLUMNS if name not in columns]
    if missing:
        raise ValueError(f"the reference store {file} lacks {missing}; rebuild it")
    return columns, fingerprint


def stored_pairs(path: str | Path) -> int | None:
    """How many pairs the store at ``path`` holds; ``None`` when there is no readable store."""
    try:
        with safe_open(str(Path(path) / STORE_FILE), framework="pt") as handle:
            return handle.get_slice("example_key").get_shape()[0]
    except (SafetensorError, OSError):
        return None


class OfflineStore(ReferenceProvider):
    """Reference log-probs (and SAE features, for FPO) read from a store built by ``lit-align precompute``: no
    reference model in memory.

    Args:
        path: the store's directory.
        source: the online reference the store is computed from by ``precompute`` (default: a frozen copy
            of the initial policy, or the adapter-disabled base for a LoRA policy). Training does not run it; a
            source that loads a model of its own (``FrozenCopy(path=...)``) is loaded once, on the CPU, to check
            the store's fingerprint against its weights, and freed.
    """

    provides: ClassVar[frozenset[Need]] = frozenset({"reference_logps", "sae_features"})

    def __init__(self, path: str, source: ReferenceProvider | None = None) -> None:
        self.path = path
        self.source = source
        self.rows: dict[int, int] = {}
        self.columns: dict[str, Tensor] = {}
        self.fingerprint: dict[str, Any] = {}

    def _remedy(self, missing: frozenset[Need]) -> str:
        lacks = " or ".join(_NOT_STORED[need] for need in sorted(missing) if need in _NOT_STORED)
        return (
            f"A store holds each response's summed log-probs only, not {lacks or 'these'}; "
            "train this objective with an online reference (FrozenCopy, or DisabledAdapter with a LoRA policy)."
        )

    def bind_policy_spec(self, spec: PolicySpec) -> None:
        """The source loads its model like the policy (``FrozenCopy(path=...)``), for precompute and the
        fingerprint check."""
        if self.source is not None:
            self.source.bind_policy_spec(spec)

    def attach(self, policy: nn.Module, datamodule=None) -> None:
        columns, stored = read_store(self.path)
        expected = run_fingerprint(source_fingerprint(self.source, policy), datamodule)
        differ = [part for part, value in expected.items() if stored.get(part) != value]
        if differ:
            values = "".join(f"; {part}: {stored.get(part)} in the store, {expected[part]} in this run"
                             for part in differ if not _is_digest(expected[part]))
            raise ConfigError("model.reference.path", self.path,
                              f"the store was built for another {' and '.join(differ)} than this run uses{values}; "
                              "rebuild it with `lit-align precompute`")
        self.columns = columns
        self.fingerprint = stored
        self.rows = {key: row for row, key in enumerate(columns["example_key"].tolist())}
        if datamodule is not None:
            self._check_coverage(datamodule)

    def attach_features(self, features: SAEFeatures) -> None:
        """Refuse a store without SAE features, or with those of another SAE, layer or width than ``features``'."""
        stored = self.fingerprint.get("sae")
        if stored is None:
            raise ValueError(
                f"the reference store at {self.path} holds no SAE features; rebuild it with `lit-align precompute` "
                "and the objective that reads them (FPO)"
            )
        expected = sae_fingerprint(features)
        differ = [part for part, value in expected.items() if stored.get(part) != value]
        if differ:
            found = ", ".join(f"{part} {stored.get(part)} (this run: {expected[part]})" for part in differ)
            raise ValueError(
                f"the reference store at {self.path} holds the features of another SAE: {found}; rebuild it with "
                "`lit-align precompute`"
            )
        missing = [f"{side}_feature_{part}" for side in SIDES for part in ("offsets", "indices", "values")
                   if f"{side}_feature_{part}" not in self.columns]
        if missing:
            raise ValueError(f"the reference store at {self.path} lacks {missing}; rebuild it")

    def _check_coverage(self, datamodule) -> None:
        for name, split in (("train", datamodule.train_set), ("validation", datamodule.val_set)):
            if split is None:
                continue
            absent = sum(key not in self.rows for key in split["example_key"])
            if absent:
                raise ValueError(
                    f"{absent} of {len(split)} {name} pairs are not in the reference store at {self.path} "
                    "(the data changed since it was built); rebuild it with `lit-align precompute`"
                )

    def lookup(self, batch: dict[str, Tensor], column: str) -> Tensor:
        """A store column for the batch's pairs, ``(B,)``, on the batch's device."""
        return self.columns[column][self._rows(batch)].to(batch["example_key"].device)

    def sequence_logps(self, batch: dict[str, Tensor]) -> Tensor:
        return torch.cat([self.lookup(batch, "chosen_logps"), self.lookup(batch, "rejected_logps")])

    def sae_features(self, batch: dict[str, Tensor], features: SAEFeatures) -> Tensor:
        rows = self._rows(batch)
        dense = [
            dense_rows(*(self.columns[f"{side}_feature_{part}"] for part in ("offsets", "indices", "values")),
                       rows, features.d_sae)
            for side in SIDES
        ]
        return torch.cat(dense).to(batch["example_key"].device)

    def _rows(self, batch: dict[str, Tensor]) -> Tensor:
        """The store rows of the batch's pairs."""
        try:
            return torch.tensor([self.rows[key] for key in batch["example_key"].tolist()])
        except KeyError as error:
            raise KeyError(f"pair with example_key {error} is not in the reference store at {self.path}") from None


def _is_digest(value: Any) -> bool:
    """A fingerprint's hash (of weights or a vocabulary), which says nothing to a reader."""
    return isinstance(value, str) and len(value) == 32
