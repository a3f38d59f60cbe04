"""Duplicate pairs: counted, dropped when asked, and never held out against their own copy (the held-out split).

Two pairs are the same when their token ids are (their ``example_key``, a hash of prompt, chosen and rejected ids).
A file that repeats pairs weighs them more in training, and a validation split drawn from it holds copies of
training pairs, so its accuracy measures memory; the data module says how many, drops them with
``drop_duplicates: true``, and always removes from a held-out split the pairs the training split holds.
"""

from __future__ import annotations

from datasets import Dataset
from lightning.pytorch.utilities import rank_zero_warn


def deduplicated(pairs: Dataset, name: str, drop: bool) -> Dataset:
    """``pairs`` with each repeated pair kept once when ``drop``; the count of repeats warned either way."""
    keys = pairs["example_key"]
    first: dict[int, int] = {}
    for row, key in enumerate(keys):
        first.setdefault(key, row)
    repeats = len(keys) - len(first)
    if not repeats:
        return pairs
    if drop:
        rank_zero_warn(f"{name}: dropped {repeats} duplicate pairs of {len(keys)} (drop_duplicates)")
        return pairs.select(sorted(first.values()))
    rank_zero_warn(f"{name}: {repeats} of {len(keys)} pairs repeat another pair; they weigh more in training "
                   "(data.drop_duplicates=true keeps each once)")
    return pairs


def held_out_split(pairs: Dataset, fraction: float, seed: int, part: str) -> tuple[Dataset, Dataset]:
    """``pairs`` split into training and held-out pairs (``fraction`` held out, seeded), the held-out ones less
    any copy of a training pair; a split that leaves either side empty is a clear error."""
    try:  # datasets refuses a split that would leave either side empty
        split = pairs.train_test_split(test_size=fraction, seed=seed)
    except ValueError as error:
        raise ValueError(f"val_fraction={fraction} of {len(pairs)} usable pairs of {part} leaves an empty split; "
                         "change val_fraction or give val_path") from error
    return split["train"], without_training_pairs(split["test"], split["train"])


def without_training_pairs(held_out: Dataset, train: Dataset) -> Dataset:
    """``held_out`` less the pairs ``train`` holds too (a held-out copy of a training pair measures memory)."""
    seen = set(train["example_key"])
    keep = [row for row, key in enumerate(held_out["example_key"]) if key not in seen]
    if len(keep) < len(held_out):
        rank_zero_warn(f"validation: removed {len(held_out) - len(keep)} held-out pairs that are copies of training "
                       "pairs")
        return held_out.select(keep)
    return held_out
