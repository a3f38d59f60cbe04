"""The bad-input catalogue of issue 8: every case ends in a clear ValueError or a counted, reported skip.

Skips are checked through the data module (``dm.report``) so that a skipped row is never a silently lost one:
each test asserts both the skip count under its reason and that every good row is still there.
"""

from __future__ import annotations

import gzip
import re
from contextlib import contextmanager

import pytest
from datasets import Dataset, DatasetDict
from transformers import AutoTokenizer

from lit_align.data import BadRow, PreferenceDataModule, split_row
from lit_align.errors import ConfigError
from tests.conftest import explicit_rows, write_jsonl

GOOD = explicit_rows(6)
HH_PROMPT = "\n\nHuman: Name a colour.\n\nAssistant:"
QUESTION = [{"role": "user", "content": "Name a colour."}]
ANSWER = [{"role": "assistant", "content": "Blue."}]


def data_module(path, tokenizer_dir, **kwargs) -> PreferenceDataModule:
    dm = PreferenceDataModule(str(path), tokenizer_dir, **{"val_fraction": 0, **kwargs})
    dm.setup("fit")
    return dm


def skipped_with_good_rows(tmp_path, tokenizer_dir, bad_rows: list[dict], **kwargs) -> dict:
    """Read ``GOOD`` plus ``bad_rows`` from a file; every good row must be kept; returns the skip counts."""
    dm = data_module(write_jsonl(tmp_path / "pairs.jsonl", GOOD + bad_rows), tokenizer_dir, **kwargs)
    report = dm.report["train"]
    assert report["rows"]["total"] == len(GOOD) + len(bad_rows)
    assert len(dm.train_set) == len(GOOD) + len(bad_rows) - sum(report["skipped"].values())
    return dict(report["skipped"])


@contextmanager
def clear_error(match: str):
    """A ``ValueError`` itself, not a subclass such as ``UnicodeDecodeError`` from deep inside a reader."""
    with pytest.raises(ValueError, match=match) as info:
        yield info
    assert info.type is ValueError, f"{info.type.__name__}: {info.value}"


@pytest.fixture(scope="module")
def tokenizer_variant(tokenizer_dir, tmp_path_factory):
    """The test tokenizer saved without some of ``pad_token``, ``eos_token``, ``chat_template``."""

    def build(*removed: str) -> str:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        for name in removed:
            setattr(tokenizer, name, None)
        target = tmp_path_factory.mktemp("tokenizer_without_" + "_".join(removed))
        tokenizer.save_pretrained(target)
        reloaded = AutoTokenizer.from_pretrained(target)
        assert all(getattr(reloaded, name) is None for name in removed)
        return str(target)

    return build


# ---- fields -----------------------------------------------------------------------------------------------


def test_missing_field():
    with pytest.raises(BadRow) as bad:
        split_row({"prompt": "Q?", "chosen": " yes"}, "explicit", None)
    assert bad.value.reason == "missing_field:rejected"


def test_missing_field_in_a_file_reads_as_null_and_is_counted(tmp_path, tokenizer_dir):
    # a file's rows share one schema: a key absent from one row is null there
    bad = [{"prompt": "Q?", "chosen": " yes"}]
    assert skipped_with_good_rows(tmp_path, tokenizer_dir, bad) == {"not_a_string:rejected": 1}


def test_a_column_missing_from_the_whole_file(tmp_path, tokenizer_dir):
    rows = [{"prompt": row["prompt"], "chosen": row["chosen"]} for row in GOOD]
    with clear_error("no usable pairs in the train data.*missing_field:rejected=6"):
        data_module(write_jsonl(tmp_path / "pairs.jsonl", rows), tokenizer_dir)


@pytest.mark.parametrize(
    "bad_row, reason",
    [
        ({"prompt": None, "chosen": " yes", "rejected": " no"}, "not_a_string:prompt"),
        ({"prompt": "Q?", "chosen": None, "rejected": " no"}, "not_a_string:chosen"),
        ({"prompt": "Q?", "chosen": 5, "rejected": " no"}, "not_a_string:chosen"),
        ({"prompt": "Q?", "chosen": " yes", "rejected": True}, "not_a_string:rejected"),
        ({"prompt": "Q?", "chosen": {"text": "yes"}, "rejected": " no"}, "not_a_string:chosen"),
    ],
)
def test_null_or_non_string_field(tmp_path, tokenizer_dir, bad_row, reason):
    assert skipped_with_good_rows(tmp_path, tokenizer_dir, [bad_row]) == {reason: 1}


@pytest.mark.parametrize(
    "bad_row, reason",
    [
        ({"prompt": "", "chosen": " yes", "rejected": " no"}, "empty_prompt"),
        ({"prompt": " \n ", "chosen": " yes", "rejected": " no"}, "empty_prompt"),
        ({"prompt": "Q?", "chosen": "", "rejected": " no"}, "empty_response"),
        ({"prompt": "Q?", "chosen": " yes", "rejected": "  "}, "empty_response"),
        ({"chosen": HH_PROMPT + " ", "rejected": HH_PROMPT + " Red."}, "empty_response"),
    ],
)
def test_empty_prompt_or_response(tmp_path, tokenizer_dir, bad_row, reason):
    assert skipped_with_good_rows(tmp_path, tokenizer_dir, [bad_row]) == {reason: 1}


def test_chosen_identical_to_rejected(tmp_path, tokenizer_dir):
    bad = [
        {"prompt": "Q?", "chosen": " same", "rejected": " same"},
        {"chosen": HH_PROMPT + " Hi", "rejected": HH_PROMPT + " Hi"},
    ]
    assert skipped_with_good_rows(tmp_path, tokenizer_dir, bad) == {"chosen_equals_rejected": 2}


# ---- HH transcripts and conversations ---------------------------------------------------------------------


def test_hh_pair_whose_prompts_differ(tmp_path, tokenizer_dir):
    bad = [{"chosen": HH_PROMPT + " Blue.", "rejected": "\n\nHuman: Name a fruit.\n\nAssistant: Pear."}]
    good_hh = [{"chosen": HH_PROMPT + f" Blue {i}.", "rejected": HH_PROMPT + f" No {i}."} for i in range(3)]
    dm = data_module(write_jsonl(tmp_path / "hh.jsonl", good_hh + bad), tokenizer_dir, row_format="hh")
    assert dict(dm.report["train"]["skipped"]) == {"hh_prompts_differ": 1} and len(dm.train_set) == 3


def test_hh_transcript_without_an_assistant_turn():
    with pytest.raises(BadRow) as bad:
        split_row({"chosen": "\n\nHuman: Hi", "rejected": "\n\nHuman: Hello"}, "hh", None)
    assert bad.value.reason == "hh_no_assistant_turn"


@pytest.mark.parametrize(
    "bad_row, reason",
    [
        ({"prompt": QUESTION, "chosen": QUESTION, "rejected": ANSWER}, "no_assistant_turn"),
        ({"chosen": QUESTION, "rejected": QUESTION}, "no_assistant_turn"),
        (
            {"chosen": QUESTION + ANSWER, "rejected": QUESTION + [{"role": "assistant"}]},
            "bad_messages:rejected",
        ),
    ],
)
def test_conversational_row_without_an_assistant_turn(tmp_path, tokenizer_dir, bad_row, reason):
    good = [
        {"prompt": QUESTION, "chosen": ANSWER, "rejected": [{"role": "assistant", "content": f"No {i}."}]}
        for i in range(3)
    ]
    dm = data_module(write_jsonl(tmp_path / "chat.jsonl", good + [bad_row]), tokenizer_dir)
    assert dict(dm.report["train"]["skipped"]) == {reason: 1} and len(dm.train_set) == 3


def test_chat_template_whose_prompt_is_not_a_prefix_of_the_conversation():
    def template(messages, add_generation_prompt):  # the generation prompt adds a newline the answer lacks
        text = "".join(f"<|{m['role']}|>{m['content']}</s>" for m in messages)
        return text + ("<|assistant|>\n" if add_generation_prompt else "")

    with pytest.raises(BadRow) as bad:
        split_row(
            {"prompt": QUESTION, "chosen": ANSWER, "rejected": [{"role": "assistant", "content": "No."}]},
            "conversational",
            template,
        )
    assert bad.value.reason == "chat_template_prompt_not_prefix"


# ---- lengths ----------------------------------------------------------------------------------------------

LONG_PROMPT = {"prompt": " ".join(f"word{i}" for i in range(40)), "chosen": " yes", "rejected": " no"}
LONG_RESPONSE = {"prompt": "Q?", "chosen": " " + " ".join(f"yes{i}" for i in range(40)), "rejected": " no"}
SHARED_START = {
    "prompt": "Q?",
    "chosen": " " + " ".join(f"w{i}" for i in range(40)) + " yes",
    "rejected": " " + " ".join(f"w{i}" for i in range(40)) + " no",
}


@pytest.mark.parametrize(
    "mode, skipped, notes",
    [
        ("keep_end", {}, {"prompt_truncated": 1}),
        ("keep_start", {}, {"prompt_truncated": 1}),
        ("drop", {"prompt_too_long": 1}, {}),
    ],
)
def test_prompt_longer_than_max_prompt_length(tmp_path, tokenizer_dir, mode, skipped, notes):
    dm = data_module(
        write_jsonl(tmp_path / "p.jsonl", GOOD + [LONG_PROMPT]),
        tokenizer_dir,
        max_length=64,
        max_prompt_length=24,
        truncation_mode=mode,
    )
    assert dict(dm.report["train"]["skipped"]) == skipped
    assert dict(dm.report["train"]["notes"]) == notes
    assert len(dm.train_set) == len(GOOD) + 1 - len(skipped)
    assert max(len(p) for p in dm.train_set["prompt_ids"]) <= 24


@pytest.mark.parametrize(
    "mode, skipped, notes",
    [
        ("keep_end", {"identical_after_truncation": 1}, {"response_truncated": 1}),
        ("keep_start", {"identical_after_truncation": 1}, {"response_truncated": 1}),
        ("drop", {"pair_too_long": 2}, {}),
    ],
)
def test_row_longer_than_max_length(tmp_path, tokenizer_dir, mode, skipped, notes):
    dm = data_module(
        write_jsonl(tmp_path / "p.jsonl", GOOD + [LONG_RESPONSE, SHARED_START]),
        tokenizer_dir,
        max_length=64,
        max_prompt_length=24,
        truncation_mode=mode,
    )
    assert dict(dm.report["train"]["skipped"]) == skipped
    assert dict(dm.report["train"]["notes"]) == notes
    assert len(dm.train_set) == len(GOOD) + 2 - sum(skipped.values())
    for pair in dm.train_set:
        assert len(pair["prompt_ids"]) + max(len(pair["chosen_ids"]), len(pair["rejected_ids"])) <= 64


# ---- files ------------------------------------------------------------------------------------------------


def write_bytes(path, data: bytes) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return str(path)


INVALID_UTF8 = {
    "pairs.jsonl": (
        b'{"prompt": "fine", "chosen": " a", "rejected": " b"}\n'
        b'{"prompt": "caf\xe9", "chosen": " a", "rejected": " b"}\n'  # Latin-1, not UTF-8
    ),
    "pairs.jsonl.gz": b'{"prompt": "caf\xe9", "chosen": " a", "rejected": " b"}\n',
    "pairs.json": b'[{"prompt": "caf\xe9", "chosen": " a", "rejected": " b"}]',
    "pairs.csv": b"prompt,chosen,rejected\ncaf\xe9,a,b\n",
}


@pytest.mark.parametrize("name", sorted(INVALID_UTF8))
def test_invalid_utf8_names_the_file(tmp_path, tokenizer_dir, name):
    path = write_bytes(tmp_path / name, INVALID_UTF8[name])
    with clear_error(f"could not read preference data from {re.escape(repr(path))}.*(UTF-?8|utf-8)"):
        data_module(path, tokenizer_dir)


def test_invalid_json_names_the_file(tmp_path, tokenizer_dir):
    path = write_bytes(
        tmp_path / "pairs.jsonl", b'{"prompt": "Q?", "chosen": " a", "rejected": " b"}\n{"prompt": \n'
    )
    with clear_error(f"could not read preference data from {re.escape(repr(path))}.*JSON"):
        data_module(path, tokenizer_dir)


EMPTY = {
    "empty.jsonl": (b"", "the file is empty"),
    "blank.jsonl": (b"\n  \n", "the file is empty"),
    "empty.jsonl.gz": (b"", "the file is empty"),
    "empty.json": (b"[]", "the file holds no rows"),
    "header_only.csv": (b"prompt,chosen,rejected\n", "the file holds no rows"),
}


@pytest.mark.parametrize("name", sorted(EMPTY))
def test_empty_file(tmp_path, tokenizer_dir, name):
    data, message = EMPTY[name]
    path = write_bytes(tmp_path / name, data)
    with clear_error(f"could not read preference data from {re.escape(repr(path))}.*{message}"):
        data_module(path, tokenizer_dir)


def test_empty_parquet_and_empty_validation_file(tmp_path, tokenizer_dir):
    Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []}).to_parquet(tmp_path / "empty.parquet")
    empty = str(tmp_path / "empty.parquet")
    with clear_error(f"{re.escape(repr(empty))}.*the file holds no rows"):
        data_module(empty, tokenizer_dir)
    train = write_jsonl(tmp_path / "train.jsonl", GOOD)
    with clear_error(f"{re.escape(repr(empty))}.*the file holds no rows"):
        data_module(train, tokenizer_dir, val_path=empty)


def test_empty_saved_dataset(tmp_path, tokenizer_dir):
    # datasets cannot load an empty dataset it saved itself (IndexError inside load_from_disk); the user still
    # gets a ValueError naming the path
    Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []}).save_to_disk(tmp_path / "saved")
    with clear_error(f"could not read preference data from {re.escape(repr(str(tmp_path / 'saved')))}"):
        data_module(tmp_path / "saved", tokenizer_dir)


def test_missing_split_of_a_saved_dataset_dict(tmp_path, tokenizer_dir):
    DatasetDict({"train": Dataset.from_list(GOOD)}).save_to_disk(tmp_path / "saved")
    with clear_error(r"no split 'validation'; the dataset has \['train'\]"):
        data_module(tmp_path / "saved", tokenizer_dir, split="validation")


def test_unsupported_or_missing_file(tmp_path, tokenizer_dir):
    (tmp_path / "pairs.txt").write_text("prompt chosen rejected\n")
    with clear_error("unsupported file type '.txt'; use one of"):
        data_module(tmp_path / "pairs.txt", tokenizer_dir)
    with pytest.raises(ConfigError, match=f"data.path={re.escape(repr(str(tmp_path / 'absent.jsonl')))}: not a local"):
        data_module(tmp_path / "absent.jsonl", tokenizer_dir)


# ---- splits that end up empty -----------------------------------------------------------------------------


def test_every_row_skipped(tmp_path, tokenizer_dir):
    rows = [dict(row, rejected=row["chosen"]) for row in GOOD]
    with clear_error(
        r"no usable pairs in the train data: train \(.*pairs.jsonl, read as explicit\): kept 0 of 6 pairs; "
        "skipped: chosen_equals_rejected=6"
    ):
        data_module(write_jsonl(tmp_path / "pairs.jsonl", rows), tokenizer_dir)


def test_every_validation_row_skipped(tmp_path, tokenizer_dir):
    train = write_jsonl(tmp_path / "train.jsonl", GOOD)
    val = write_jsonl(tmp_path / "val.jsonl", [{"prompt": "", "chosen": " a", "rejected": " b"}])
    with clear_error("no usable pairs in the validation data.*empty_prompt=1"):
        data_module(train, tokenizer_dir, val_path=str(val))


def test_val_fraction_that_leaves_a_split_empty(tmp_path, tokenizer_dir):
    path = write_jsonl(tmp_path / "pairs.jsonl", GOOD[:1])
    with clear_error(
        "val_fraction=0.05 of 1 usable pairs of .*pairs.jsonl leaves an empty split; change val_fraction or give "
        "val_path"
    ):
        data_module(path, tokenizer_dir, val_fraction=0.05)
    with pytest.raises(ConfigError, match=r"data.val_fraction=1.0: val_fraction must lie in \[0, 1\)"):
        PreferenceDataModule(str(path), tokenizer_dir, val_fraction=1.0)


# ---- tokenizers -------------------------------------------------------------------------------------------


def test_tokenizer_without_pad_token_pads_with_eos(tmp_path, tokenizer_variant):
    dm = data_module(
        write_jsonl(tmp_path / "pairs.jsonl", GOOD), tokenizer_variant("pad_token"), batch_size=6
    )
    eos = dm.tokenizer.eos_token_id
    assert dm.pad_token_id == eos
    batch = next(iter(dm.train_dataloader()))
    padding = batch["attention_mask"] == 0
    assert padding.any()
    assert (batch["input_ids"][padding] == eos).all() and not batch["response_mask"][padding].any()


def test_tokenizer_without_chat_template_given_conversational_rows(tmp_path, tokenizer_variant):
    no_template = tokenizer_variant("chat_template")
    rows = [{"prompt": QUESTION, "chosen": ANSWER, "rejected": [{"role": "assistant", "content": "No."}]}]
    with clear_error(
        f"conversational rows need a chat template and the tokenizer {re.escape(repr(no_template))} "
        "has none; give the data module chat_template"
    ):
        data_module(write_jsonl(tmp_path / "chat.jsonl", rows), no_template)
    assert len(data_module(write_jsonl(tmp_path / "pairs.jsonl", GOOD), no_template).train_set) == len(GOOD)


def test_tokenizer_without_eos(tmp_path, tokenizer_variant):
    with clear_error("the tokenizer has no EOS token"):
        data_module(write_jsonl(tmp_path / "pairs.jsonl", GOOD), tokenizer_variant("eos_token"))
