"""The offline reference store: per-response reference log-probs precomputed once, so no reference model
sits in memory during training.

A store is a directory holding ``reference.safetensors`` with, per pair, its ``example_key`` (the hash of its
token ids), the summed reference log-probs and response lengths of chosen and rejected, and a fingerprint in
the file's metadata: the reference weights, the tokenizer, the length settings and the data it covers.
Training refuses a store whose fingerprint does not match the run, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from peft import PeftModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from lit_align.objectives.base import Need
from lit_align.reference.base import ReferenceProvider

STORE_FILE = "reference.safetensors"
STORE_COLUMNS = ("example_key", "chosen_logps", "rejected_logps", "chosen_lengths", "rejected_lengths")


def weights_fingerprint(model: nn.Module, sample: int = 4096) -> str:
    """A cheap fingerprint of a model's base weights: names, shapes, dtypes, sums and a strided sample.

    LoRA parameters are skipped and peft's ``base_layer`` renaming undone, so a LoRA policy's base and a
    plain copy of it agree.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(base.state_dict().items()):
        if "lora_" in name:
            continue
        flat = tensor.detach().reshape(-1).float().cpu()
        stride = max(1, flat.numel() // sample)
        digest.update(f"{name.replace('base_layer.', '')}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(f"{flat.double().sum().item():.6e}".encode())
        digest.update(flat[::stride].numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A fingerprint of a tokenizer's vocabulary, special tokens and chat template."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps([tokenizer.all_special_tokens, getattr(tokenizer, "chat_template", None)]).encode())
    return digest.hexdigest()


def data_fingerprint(keys: Tensor) -> str:
    """A fingerprint of the set of example keys a store covers."""
    return hashlib.blake2b(keys.sort().values.numpy().tobytes(), digest_size=16).hexdigest()


def run_fingerprint(policy: nn.Module, datamodule) -> dict[str, Any]:
    """The fingerprint a store must carry to serve this run (data excluded: coverage is checked key by key)."""
    fingerprint: dict[str, Any] = {"reference": weights_fingerprint(policy)}
    if datamodule is not None:
        fingerprint["tokenizer"] = tokenizer_fingerprint(datamodule.tokenizer)
        lengths = datamodule.lengths
        fingerprint["lengths"] = [lengths.max_length, lengths.max_prompt_length, lengths.truncation_mode]
    return fingerprint


def write_store(path: str | Path, columns: dict[str, Tensor], fingerprint: dict[str, Any]) -> Path:
    """Write a store (deduplicating keys, as distributed predict pads with repeats); returns the file."""
    keys, first = _first_occurrences(columns["example_key"])
    tensors = {name: columns[name][first].contiguous() for name in STORE_COLUMNS}
    fingerprint = {**fingerprint, "data": data_fingerprint(keys)}
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True)
    partial = target / f"{STORE_FILE}.partial"
    save_file(tensors, str(partial), metadata={"fingerprint": json.dumps(fingerprint)})
    partial.replace(target / STORE_FILE)
    return target / STORE_FILE


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


class OfflineStore(ReferenceProvider):
    """Reference log-probs read from a store built by ``lit-align precompute``: no reference model in memory.

    Args:
        path: the store's directory.
        source: the online reference the store is computed from by ``precompute`` (default: a frozen copy
            of the initial policy, or the adapter-disabled base for a LoRA policy). Training never builds it.
    """

    provides: ClassVar[frozenset[Need]] = frozenset({"reference_logps"})

    def __init__(self, path: str, source: ReferenceProvider | None = None) -> None:
        self.path = path
        self.source = source
        self.rows: dict[int, int] = {}
        self.columns: dict[str, Tensor] = {}

    def _remedy(self, missing: frozenset[Need]) -> str:
        return (
            "A store holds per-sequence log-probs only, not the reference's full next-token distributions; "
            "train this objective with an online reference (FrozenCopy, or DisabledAdapter with a LoRA policy)."
        )

    def attach(self, policy: nn.Module, datamodule=None) -> None:
        columns, stored = read_store(self.path)
        expected = run_fingerprint(policy, datamodule)
        differ = [part for part, value in expected.items() if stored.get(part) != value]
        if differ:
            raise ValueError(
                f"the reference store at {self.path} was built for another {' and '.join(differ)} than this run "
                f"uses; rebuild it with `lit-align precompute`"
            )
        self.columns = columns
        self.rows = {key: row for row, key in enumerate(columns["example_key"].tolist())}
        if datamodule is not None:
            self._check_coverage(datamodule)

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
        keys = batch["example_key"].tolist()
        try:
            rows = torch.tensor([self.rows[key] for key in keys])
        except KeyError as error:
            raise KeyError(f"pair with example_key {error} is not in the reference store at {self.path}") from None
        return self.columns[column][rows].to(batch["example_key"].device)

    def sequence_logps(self, batch: dict[str, Tensor]) -> Tensor:
        return torch.cat([self.lookup(batch, "chosen_logps"), self.lookup(batch, "rejected_logps")])
