"""Length-grouped training order: a permutation, batches of similar length, the longest first, the same batches
on every data-parallel process, resumable, and wired into ``PreferenceDataModule(group_by_length=...)``."""

from __future__ import annotations

import random
import warnings

import pytest
import torch

from lit_align.data import PreferenceDataModule
from lit_align.data.sampler import TrainOrder, length_grouped, pair_lengths
from tests.conftest import write_jsonl


def padded_tokens(order: list[int], lengths: list[int], batch: int) -> int:
    return sum(len(group) * max(lengths[i] for i in group)
               for group in (order[i : i + batch] for i in range(0, len(order), batch)))


def test_grouping_is_a_permutation_with_little_padding_and_the_longest_batch_first():
    lengths = [random.Random(i).randint(5, 500) for i in range(203)]
    order = torch.randperm(203, generator=torch.Generator().manual_seed(0)).tolist()
    grouped = length_grouped(order, lengths, batch=4, window=10, generator=torch.Generator().manual_seed(1))
    assert sorted(grouped) == list(range(203))
    assert max(lengths[i] for i in grouped[:4]) == max(lengths)  # the longest batch comes first
    assert grouped[-3:] == sorted(order[200:], key=lengths.__getitem__, reverse=True)  # partial batch stays last
    # every full batch holds neighbours in its window's ranking, so padding drops far below the random order's
    assert padded_tokens(grouped, lengths, 4) < 0.8 * padded_tokens(order, lengths, 4)
    runs = []  # the aligned runs of 4 of each window's ranking, longest first
    for start in range(0, 200, 40):
        ranked = sorted(order[start : start + 40], key=lengths.__getitem__, reverse=True)
        runs += [ranked[i : i + 4] for i in range(0, 40, 4)]
    assert sorted(grouped[i : i + 4] for i in range(0, 200, 4)) == sorted(runs)


def test_grouping_is_seeded_and_keeps_batches_whole():
    lengths = order = list(range(64))  # pair i has length i; windows hold pairs 0-31 and 32-63
    first = length_grouped(order, lengths, 8, 4, torch.Generator().manual_seed(3))
    again = length_grouped(order, lengths, 8, 4, torch.Generator().manual_seed(3))
    other = length_grouped(order, lengths, 8, 4, torch.Generator().manual_seed(4))
    assert first == again and first != other
    batches = [first[i : i + 8] for i in range(0, 64, 8)]
    assert batches[0] == list(range(63, 55, -1))
    assert sorted(b[-1] for b in batches) == list(range(0, 64, 8))  # whole runs of the ranking, longest first
    assert all(b == list(range(b[0], b[0] - 8, -1)) for b in batches)


def test_without_lengths_the_order_is_the_plain_seeded_shuffle():
    sampler = TrainOrder(list(range(50)), seed=7)
    sampler.set_epoch(2)
    assert list(sampler) == torch.randperm(50, generator=torch.Generator().manual_seed(9)).tolist()


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_processes_share_each_global_batch_and_resume_where_they_stopped(replicas):
    lengths = [random.Random(i).randint(1, 300) for i in range(97)]
    samplers = [TrainOrder(lengths, replicas, rank, seed=5, lengths=lengths, batch_size=2, window=4)
                for rank in range(replicas)]
    shares = [list(s) for s in samplers]
    generator = torch.Generator().manual_seed(5)
    whole = length_grouped(torch.randperm(97, generator=generator).tolist(), lengths, 2 * replicas, 4, generator)
    assert sorted({i for share in shares for i in share}) == list(range(97))
    for step in range(97 // (2 * replicas)):  # step k of every process takes its part of the k-th global batch
        together = sorted(i for share in shares for i in share[2 * step : 2 * step + 2])
        assert together == sorted(whole[2 * replicas * step : 2 * replicas * (step + 1)])
    resumed = TrainOrder(lengths, replicas, 0, seed=5, lengths=lengths, batch_size=2, window=4)
    resumed.load_state_dict({"epoch": 0, "consumed": 2 * replicas * 3})
    assert list(resumed) == shares[0][6:]


def test_bad_grouping_settings_are_refused():
    with pytest.raises(ValueError, match="lengths has 3 entries for 4 pairs"):
        TrainOrder([0, 1, 2, 3], lengths=[1, 2, 3])
    with pytest.raises(ValueError, match="window"):
        TrainOrder([0, 1], lengths=[1, 2], window=0)


def varied_rows(n: int = 48) -> list[dict]:
    rng = random.Random(0)
    return [
        {
            "prompt": "Question " + " ".join(["why"] * rng.randint(1, 40)) + "?",
            "chosen": " Yes" + " indeed" * rng.randint(0, 20) + ".",
            "rejected": " No" + " never" * rng.randint(0, 20) + ".",
        }
        for _ in range(n)
    ]


def make_data(path, tokenizer_dir, **kwargs) -> PreferenceDataModule:
    data = PreferenceDataModule(path=str(path), tokenizer=tokenizer_dir, max_length=256, max_prompt_length=128,
                                batch_size=4, **kwargs)
    data.setup("fit")
    return data


def test_data_module_groups_batches_by_length(tmp_path, tokenizer_dir):
    path = write_jsonl(tmp_path / "varied.jsonl", varied_rows())
    plain = make_data(path, tokenizer_dir, val_fraction=0.0)
    grouped = make_data(path, tokenizer_dir, val_fraction=0.0, group_by_length=6)
    widths = {}
    for name, data in (("plain", plain), ("grouped", grouped)):
        batches = list(data.train_dataloader())
        keys = sorted(k for batch in batches for k in batch["example_key"].tolist())
        assert keys == sorted(data.train_set["example_key"])  # every pair once per epoch
        widths[name] = sum(batch["input_ids"].numel() for batch in batches)
    assert widths["grouped"] < 0.85 * widths["plain"]
    with pytest.raises(ValueError, match="group_by_length must be >= 0"):
        PreferenceDataModule(path=str(path), tokenizer=tokenizer_dir, group_by_length=-1)


def test_pair_lengths_follow_the_split(tmp_path, tokenizer_dir):
    path = write_jsonl(tmp_path / "varied.jsonl", varied_rows())
    data = make_data(path, tokenizer_dir, val_fraction=0.25)  # the train split is a shuffled selection
    rows = data.train_set
    expected = [len(p) + max(len(c), len(r)) for p, c, r in zip(rows["prompt_ids"], rows["chosen_ids"],
                                                                  rows["rejected_ids"], strict=True)]
    assert pair_lengths(rows) == expected


def test_pairs_that_do_not_divide_into_the_processes_are_counted_as_repeated():
    with pytest.warns(UserWarning, match="37 training pairs do not divide into 2 processes: 1 pair is repeated"):
        TrainOrder(list(range(37)), num_replicas=2, rank=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainOrder(list(range(36)), num_replicas=2, rank=0)
        TrainOrder(list(range(37)), num_replicas=1, rank=0)
