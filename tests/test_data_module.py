"""``PreferenceDataModule``: every file type, the real HH-RLHF file, validation splits, reports, loaders."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import pytest
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer

from lit_align.data import LengthSettings, PairTokenizer, PreferenceDataModule, split_row
from lit_align.data.layouts import HH_ASSISTANT
from tests.conftest import HH_FILE, explicit_rows, hh_rows, write_jsonl

ROWS = explicit_rows(24)


def data_module(path, tokenizer_dir, **kwargs) -> PreferenceDataModule:
    dm = PreferenceDataModule(str(path), tokenizer_dir, **{"val_fraction": 0, **kwargs})
    dm.setup("fit")
    return dm


def keys(split: Dataset) -> list[int]:
    return list(split["example_key"])


@pytest.fixture(scope="module")
def reference_keys(tokenizer_dir) -> list[int]:
    """The keys of ``ROWS`` tokenised in memory, without ``datasets`` (the data module's default lengths)."""
    columns = {key: [row[key] for row in ROWS] for key in ROWS[0]}
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    return PairTokenizer(tokenizer, "auto", LengthSettings())(columns)["example_key"]


def write_rows(tmp_path, kind: str) -> str:
    """``ROWS`` written as one of the supported inputs; returns the path to give the data module."""
    dataset = Dataset.from_list(ROWS)
    if kind == "jsonl":
        return str(write_jsonl(tmp_path / "pairs.jsonl", ROWS))
    if kind == "json":
        (tmp_path / "pairs.json").write_text(json.dumps(ROWS), encoding="utf-8")
        return str(tmp_path / "pairs.json")
    if kind == "jsonl.gz":
        with gzip.open(tmp_path / "pairs.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in ROWS)
        return str(tmp_path / "pairs.jsonl.gz")
    if kind == "parquet":
        dataset.to_parquet(tmp_path / "pairs.parquet")
        return str(tmp_path / "pairs.parquet")
    if kind == "csv":
        dataset.to_csv(tmp_path / "pairs.csv", index=False)
        return str(tmp_path / "pairs.csv")
    if kind == "saved_dataset":
        dataset.save_to_disk(tmp_path / "saved")
        return str(tmp_path / "saved")
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["jsonl", "json", "jsonl.gz", "parquet", "csv", "saved_dataset"])
def test_every_file_type_gives_the_same_pairs(tmp_path, tokenizer_dir, reference_keys, kind):
    dm = data_module(write_rows(tmp_path, kind), tokenizer_dir)
    assert keys(dm.train_set) == reference_keys
    assert len(set(reference_keys)) == len(ROWS)
    assert dict(dm.report["train"]["rows"]) == {"total": len(ROWS)} and not dm.report["train"]["skipped"]


def test_saved_dataset_dict_gives_train_and_validation_splits(tmp_path, tokenizer_dir, reference_keys):
    DatasetDict({"train": Dataset.from_list(ROWS[:18]), "test": Dataset.from_list(ROWS[18:])}).save_to_disk(
        tmp_path / "saved"
    )
    saved = str(tmp_path / "saved")
    dm = data_module(saved, tokenizer_dir, split="train", val_path=saved, val_split="test")
    assert keys(dm.train_set) == reference_keys[:18]
    assert keys(dm.val_set) == reference_keys[18:]
    assert set(dm.report) == {"train", "validation"}
    assert dm.report["validation"]["rows"]["total"] == 6


def test_val_path_file(tmp_path, tokenizer_dir, reference_keys):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS[:20])
    val = write_jsonl(tmp_path / "val.jsonl", ROWS[20:])
    dm = data_module(train, tokenizer_dir, val_path=str(val), val_fraction=0.5)  # val_path wins
    assert keys(dm.train_set) == reference_keys[:20]
    assert keys(dm.val_set) == reference_keys[20:]


def test_val_fraction_holds_out_a_seeded_disjoint_part(tmp_path, tokenizer_dir, reference_keys):
    path = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    dm = data_module(path, tokenizer_dir, val_fraction=0.25, seed=3)
    train, val = keys(dm.train_set), keys(dm.val_set)
    assert (len(train), len(val)) == (18, 6)
    assert sorted(train + val) == sorted(reference_keys)
    again = data_module(path, tokenizer_dir, val_fraction=0.25, seed=3)
    assert keys(again.val_set) == val
    other_seed = data_module(path, tokenizer_dir, val_fraction=0.25, seed=4)
    assert set(keys(other_seed.val_set)) != set(val)


def test_conversational_file(tmp_path, tokenizer_dir):
    question = [{"role": "user", "content": "Name a colour."}]
    rows = [
        {
            "chosen": question + [{"role": "assistant", "content": f"Blue {i}."}],
            "rejected": question + [{"role": "assistant", "content": f"No {i}."}],
        }
        for i in range(4)
    ] + [
        {
            "prompt": question,
            "chosen": [{"role": "assistant", "content": f"Red {i}."}],
            "rejected": [{"role": "assistant", "content": f"Never {i}."}],
        }
        for i in range(4)
    ]
    dm = data_module(write_jsonl(tmp_path / "chat.jsonl", rows), tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(dm.train_set) == 8
    for i, pair in enumerate(dm.train_set):
        assert tokenizer.decode(pair["prompt_ids"]) == "<|user|>Name a colour.</s><|assistant|>"
        colour = "Blue" if i < 4 else "Red"
        assert tokenizer.decode(pair["chosen_ids"]) == f"{colour} {i % 4}.</s>"


def test_dataloaders_give_collated_batches(tmp_path, tokenizer_dir):
    path = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    dm = data_module(path, tokenizer_dir, val_fraction=0.25, batch_size=4, eval_batch_size=6)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == batch["response_mask"].shape[0] == 8
    assert batch["example_key"].shape == (4,)
    assert set(batch["example_key"].tolist()) <= set(keys(dm.train_set))
    (val_batch,) = list(dm.val_dataloader())
    assert val_batch["example_key"].tolist() == keys(dm.val_set)
    train_loader, val_loader = dm.predict_dataloader()
    seen = [k for batch in train_loader for k in batch["example_key"].tolist()]
    assert seen == keys(dm.train_set)  # unshuffled, every pair
    assert data_module(path, tokenizer_dir).val_dataloader() == []


# ---- the real HH-RLHF file --------------------------------------------------------------------------------


def naive_hh_verdicts() -> list[str | None]:
    """Per HH row, why it must be skipped (or None), decided straight from the text."""
    verdicts = []
    for row in hh_rows():
        cut_c, cut_r = row["chosen"].rindex(HH_ASSISTANT), row["rejected"].rindex(HH_ASSISTANT)
        if row["chosen"][:cut_c] != row["rejected"][:cut_r]:
            verdicts.append("hh_prompts_differ")
        elif (
            not row["chosen"][cut_c + len(HH_ASSISTANT) :].strip()
            or not row["rejected"][cut_r + len(HH_ASSISTANT) :].strip()
        ):
            verdicts.append("empty_response")
        else:
            verdicts.append(None)
    return verdicts


def test_the_real_hh_file_keeps_every_good_pair_and_counts_the_bad(tokenizer_dir):
    verdicts = naive_hh_verdicts()
    assert len(verdicts) == 2312
    assert verdicts.count("hh_prompts_differ") == 5 and verdicts.count("empty_response") == 4

    dm = data_module(HH_FILE, tokenizer_dir, max_length=4096, max_prompt_length=2048)
    report = dm.report["train"]
    assert report["rows"]["total"] == 2312
    assert dict(report["skipped"]) == {"hh_prompts_differ": 5, "empty_response": 4}
    assert not report["notes"]  # long enough limits: nothing truncated, every prompt a token prefix
    assert len(dm.train_set) == 2303

    # the kept pairs are exactly the good rows, in file order: nothing lost, nothing altered
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    good = [row for row, verdict in zip(hh_rows(), verdicts, strict=True) if verdict is None]
    kept = dm.train_set[:]
    prompts, chosen = tokenizer.batch_decode(kept["prompt_ids"]), tokenizer.batch_decode(kept["chosen_ids"])
    for row, prompt, response in zip(good, prompts, chosen, strict=True):
        text_prompt, text_chosen, _ = split_row(row, "hh", None)
        assert (prompt, response) == (text_prompt, text_chosen + tokenizer.eos_token)


def triples(split: Dataset) -> list[tuple[list[int], list[int], list[int]]]:
    columns = split[:]
    return list(zip(columns["prompt_ids"], columns["chosen_ids"], columns["rejected_ids"], strict=True))


def test_hh_truncation_counts_in_the_report(tmp_path, tokenizer_dir):
    """On 200 HH rows with small limits, the counted truncations match counts made from the untruncated token
    lengths, and ``drop`` skips exactly the pairs that the keep modes truncate."""
    path = tmp_path / "hh200.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in hh_rows(200))
    max_length, max_prompt = 160, 96
    full = data_module(path, tokenizer_dir, max_length=8192, max_prompt_length=4096)
    assert not full.report["train"]["notes"]
    long_prompt, long_pair, ties = [], [], []
    for prompt, chosen, rejected in triples(full.train_set):
        room = max_length - min(len(prompt), max_prompt)
        long_prompt.append(len(prompt) > max_prompt)
        long_pair.append(max(len(chosen), len(rejected)) > room)
        ties.append(long_pair[-1] and chosen[:room] == rejected[:room])
    assert sum(long_prompt) > 10 and sum(long_pair) > 10  # the limits bite

    for mode in ("keep_end", "keep_start"):
        dm = data_module(
            path, tokenizer_dir, truncation_mode=mode, max_length=max_length, max_prompt_length=max_prompt
        )
        report = dm.report["train"]
        skipped_ties = Counter({"identical_after_truncation": sum(ties)})
        assert report["skipped"] == full.report["train"]["skipped"] + skipped_ties
        kept = [not tie for tie in ties]
        assert report["notes"]["prompt_truncated"] == sum(
            a and b for a, b in zip(long_prompt, kept, strict=True)
        )
        assert report["notes"]["response_truncated"] == sum(
            a and b for a, b in zip(long_pair, kept, strict=True)
        )
        assert len(dm.train_set) == sum(kept)
        assert max(len(p) + max(len(c), len(r)) for p, c, r in triples(dm.train_set)) <= max_length

    dropped = data_module(
        path, tokenizer_dir, truncation_mode="drop", max_length=max_length, max_prompt_length=max_prompt
    )
    skipped = dropped.report["train"]["skipped"]
    assert skipped["prompt_too_long"] == sum(long_prompt)
    assert skipped["pair_too_long"] == sum(b and not a for a, b in zip(long_prompt, long_pair, strict=True))
    assert len(dropped.train_set) == sum(not (a or b) for a, b in zip(long_prompt, long_pair, strict=True))
    assert not dropped.report["train"]["notes"]


def test_setup_is_idempotent(tmp_path, tokenizer_dir):
    dm = PreferenceDataModule(str(write_jsonl(tmp_path / "pairs.jsonl", ROWS)), tokenizer_dir, val_fraction=0)
    dm.prepare_data()
    dm.setup("fit")
    first = dm.train_set
    dm.setup("validate")
    assert dm.train_set is first and len(first) == len(ROWS)
