"""Row formats, pair tokenisation (prefix property, EOS, truncation, example keys) and the pair collator."""

from __future__ import annotations

import pytest
import torch
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer

from lit_align.data import LengthSettings, PairCollator, PairTokenizer, split_row
from lit_align.data.layouts import detect_format
from lit_align.data.tokenize import OK, example_key
from tests.conftest import CHAT_TEMPLATE, explicit_rows, hh_rows

CHAT = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one?"},
]
QUESTION_ONLY = CHAT[-1:]
GOOD, BAD = {"role": "assistant", "content": "Green."}, {"role": "assistant", "content": "No."}


def render(messages: list[dict], add_generation_prompt: bool) -> str:
    """``CHAT_TEMPLATE`` written out in Python, independent of jinja and transformers."""
    text = "".join(f"<|{m['role']}|>{m['content']}</s>" for m in messages)
    return text + ("<|assistant|>" if add_generation_prompt else "")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


def tokenise(tokenizer, rows: list[dict], row_format="auto", **lengths) -> list[dict]:
    """Run ``PairTokenizer`` as ``datasets.map`` would (one batch; absent keys read as null), return rows."""
    lengths = {"max_length": 4096, "max_prompt_length": 2048, **lengths}
    columns = {key: [row.get(key) for row in rows] for key in dict.fromkeys(k for row in rows for k in row)}
    out = PairTokenizer(tokenizer, row_format, LengthSettings(**lengths))(columns)
    assert all(len(values) == len(rows) for values in out.values())
    return [dict(zip(out, values, strict=True)) for values in zip(*out.values(), strict=True)]


def ids(tokenizer, text: str, special: bool = True) -> list[int]:
    return tokenizer(text, add_special_tokens=special)["input_ids"]


# ---- row formats ------------------------------------------------------------------------------------------


def test_explicit_row_is_passed_through():
    row = {"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5"}
    assert detect_format(row) == "explicit"
    assert split_row(row, "auto", render) == ("Q: 2+2?", " 4", " 5")


def test_hh_row_splits_at_the_last_assistant_turn():
    prompt = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Name a colour.\n\nAssistant:"
    row = {"chosen": prompt + " Blue.", "rejected": prompt + " I won't."}
    assert detect_format(row) == "hh"
    assert split_row(row, "auto", render) == (prompt, " Blue.", " I won't.")
    assert split_row(row, "hh", render) == (prompt, " Blue.", " I won't.")


def test_conversational_row_with_explicit_prompt_uses_the_chat_template():
    row = {"prompt": CHAT, "chosen": [GOOD], "rejected": [BAD]}
    assert detect_format(row) == "conversational"
    prompt, chosen, rejected = split_row(row, "auto", render)
    assert prompt == "<|user|>Name a colour.</s><|assistant|>Blue.</s><|user|>Another one?</s><|assistant|>"
    assert (chosen, rejected) == ("Green.</s>", "No.</s>")


def test_conversational_row_without_prompt_takes_the_shared_messages_as_prompt():
    with_prompt = split_row({"prompt": CHAT, "chosen": [GOOD], "rejected": [BAD]}, "conversational", render)
    row = {"chosen": CHAT + [GOOD], "rejected": CHAT + [BAD]}
    assert detect_format(row) == "conversational"
    assert split_row(row, "conversational", render) == with_prompt


def test_conversational_rows_render_with_the_tokenizers_template(tokenizer):
    assert tokenizer.chat_template == CHAT_TEMPLATE
    row = {"chosen": CHAT + [GOOD], "rejected": CHAT + [BAD]}
    (pair,) = tokenise(tokenizer, [row])
    assert pair["status"] == OK and pair["notes"] == []
    assert tokenizer.decode(pair["prompt_ids"]) == render(CHAT, add_generation_prompt=True)
    assert tokenizer.decode(pair["chosen_ids"]) == "Green.</s>"
    assert tokenizer.decode(pair["rejected_ids"]) == "No.</s>"
    # the template's own end-of-turn is the EOS: it is not appended a second time
    assert pair["chosen_ids"].count(tokenizer.eos_token_id) == 1


# ---- tokenisation -----------------------------------------------------------------------------------------


def test_prompt_tokens_are_a_prefix_of_prompt_plus_response(tokenizer):
    rows = explicit_rows(8) + hh_rows(60)
    pairs = tokenise(tokenizer, rows)
    eos = tokenizer.eos_token_id
    checked = 0
    for row, pair in zip(rows, pairs, strict=True):
        if pair["status"] != OK:
            continue
        prompt, chosen, rejected = split_row(row, "auto", render)
        assert pair["notes"] == []
        for text, response_ids in ((chosen, pair["chosen_ids"]), (rejected, pair["rejected_ids"])):
            assert pair["prompt_ids"] + response_ids == ids(tokenizer, prompt + text) + [eos]
            checked += 1
    assert checked >= 2 * 60


def test_special_tokens_come_from_the_tokenizer_for_text_and_from_the_template_for_conversations(
    tokenizer_dir,
):
    """A tokenizer that adds BOS (like Llama's): text rows get it, once, in the prompt; conversational rows
    get only what the chat template renders (templates carry their own BOS)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    assert ids(tokenizer, "hi")[0] == bos
    text, chat = tokenise(
        tokenizer,
        [
            {"prompt": "Say hi.", "chosen": " hi", "rejected": " no"},
            {"prompt": QUESTION_ONLY, "chosen": [GOOD], "rejected": [BAD]},
        ],
    )
    assert text["notes"] == [] and text["prompt_ids"] == ids(tokenizer, "Say hi.")
    assert text["prompt_ids"][0] == bos and bos not in text["chosen_ids"]
    assert chat["notes"] == [] and bos not in chat["prompt_ids"] + chat["chosen_ids"]
    assert tokenizer.decode(chat["prompt_ids"]) == render(QUESTION_ONLY, add_generation_prompt=True)


def test_eos_is_appended_exactly_once(tokenizer):
    eos = tokenizer.eos_token_id
    rows = [
        {"prompt": "Say hi.", "chosen": " hi", "rejected": " no"},
        {"prompt": "Say hi.", "chosen": " hi</s>", "rejected": " no"},  # the text already ends with EOS
    ]
    first, second = tokenise(tokenizer, rows)
    assert first["chosen_ids"] == ids(tokenizer, " hi", special=False) + [eos]
    assert second["chosen_ids"] == first["chosen_ids"]
    for pair in (first, second):
        for response in (pair["chosen_ids"], pair["rejected_ids"]):
            assert response[-1] == eos and response.count(eos) == 1


def test_a_merge_across_the_prompt_boundary_is_noted_and_the_response_tokenised_alone(tokenizer):
    prompt, chosen, rejected = "What is th", "e answer?", "e colour?"
    assert ids(tokenizer, prompt + chosen)[: len(ids(tokenizer, prompt))] != ids(
        tokenizer, prompt
    )  # a real merge
    (pair,) = tokenise(tokenizer, [{"prompt": prompt, "chosen": chosen, "rejected": rejected}])
    assert pair["status"] == OK and pair["notes"] == ["prompt_not_prefix"]
    assert pair["prompt_ids"] == ids(tokenizer, prompt)
    assert pair["chosen_ids"] == ids(tokenizer, chosen, special=False) + [tokenizer.eos_token_id]


LONG_ROW = {
    "prompt": " ".join(f"word{i}" for i in range(40)),
    "chosen": " " + " ".join(f"yes{i}" for i in range(30)),
    "rejected": " no",
}


@pytest.mark.parametrize("mode", ["keep_end", "keep_start"])
def test_truncation_keeps_the_chosen_end_of_the_prompt_and_the_start_of_responses(tokenizer, mode):
    (full,) = tokenise(tokenizer, [LONG_ROW])
    assert len(full["prompt_ids"]) > 16 and len(full["prompt_ids"]) + len(full["chosen_ids"]) > 48
    (pair,) = tokenise(tokenizer, [LONG_ROW], max_length=48, max_prompt_length=16, truncation_mode=mode)
    assert pair["status"] == OK
    assert pair["notes"] == ["prompt_truncated", "response_truncated"]
    expected_prompt = full["prompt_ids"][-16:] if mode == "keep_end" else full["prompt_ids"][:16]
    assert pair["prompt_ids"] == expected_prompt
    assert pair["chosen_ids"] == full["chosen_ids"][:32]
    assert pair["rejected_ids"] == full["rejected_ids"]  # short enough: untouched, EOS kept
    assert len(pair["prompt_ids"]) + len(pair["chosen_ids"]) == 48


def test_truncation_of_the_prompt_alone(tokenizer):
    (full,) = tokenise(tokenizer, [LONG_ROW])
    (pair,) = tokenise(tokenizer, [LONG_ROW], max_length=4096, max_prompt_length=16)
    assert pair["notes"] == ["prompt_truncated"]
    assert pair["prompt_ids"] == full["prompt_ids"][-16:]
    assert pair["chosen_ids"] == full["chosen_ids"]


def test_drop_mode_skips_over_long_pairs_with_a_reason(tokenizer):
    fits_prompt = dict(LONG_ROW, prompt="Short prompt.")
    short = {"prompt": "Short prompt.", "chosen": " yes", "rejected": " no"}
    pairs = tokenise(
        tokenizer, [LONG_ROW, fits_prompt, short], max_length=24, max_prompt_length=16, truncation_mode="drop"
    )
    assert [p["status"] for p in pairs] == ["prompt_too_long", "pair_too_long", OK]
    assert pairs[2]["notes"] == []
    assert all(p["prompt_ids"] == p["chosen_ids"] == [] and p["example_key"] == 0 for p in pairs[:2])


def test_length_settings_reject_a_prompt_budget_outside_the_total():
    with pytest.raises(ValueError, match="max_prompt_length"):
        LengthSettings(max_length=16, max_prompt_length=16)
    with pytest.raises(ValueError, match="max_prompt_length"):
        LengthSettings(max_length=16, max_prompt_length=0)


def test_example_key_is_stable_and_separates_pairs(tokenizer):
    # a fixed value: the offline reference store is keyed by it; it must not change between runs or versions
    assert example_key([1, 2, 3], [4, 2], [5, 2]) == -1021555805495060545
    rows = explicit_rows(24)
    first, second = tokenise(tokenizer, rows), tokenise(tokenizer, rows)
    keys = [p["example_key"] for p in first]
    assert keys == [p["example_key"] for p in second]
    assert len(set(keys)) == len(rows)
    for pair in first:
        assert pair["example_key"] == example_key(
            pair["prompt_ids"], pair["chosen_ids"], pair["rejected_ids"]
        )
    prompt, chosen, rejected = [1, 2, 3], [4, 2], [5, 2]
    variants = [
        (prompt, rejected, chosen),  # swapped
        ([1, 2], [3, 4, 2], [5, 2]),  # same tokens, boundary moved
        (prompt, [4, 2], [5, 6]),  # one token changed
    ]
    assert len({example_key(prompt, chosen, rejected), *(example_key(*v) for v in variants)}) == 4


# ---- collator ---------------------------------------------------------------------------------------------


def test_collator_stacks_chosen_over_rejected_and_masks_responses():
    pairs = [
        {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 2], "rejected_ids": [9, 9, 9, 2], "example_key": 11},
        {
            "prompt_ids": [5],
            "chosen_ids": [10, 11, 12, 13, 14, 2],
            "rejected_ids": [15, 2],
            "example_key": -3,
        },
        {"prompt_ids": [4, 4], "chosen_ids": [2], "rejected_ids": [16, 2], "example_key": 7},
    ]
    batch = PairCollator(pad_token_id=0)(pairs)
    width = 7  # the batch's longest sequence (the second chosen), not a fixed max_length
    assert (
        batch["input_ids"].shape
        == batch["attention_mask"].shape
        == batch["response_mask"].shape
        == (6, width)
    )
    assert batch["input_ids"].dtype == torch.long and batch["response_mask"].dtype == torch.bool
    assert batch["example_key"].tolist() == [11, -3, 7]
    rows = [(p["prompt_ids"], p["chosen_ids"]) for p in pairs] + [
        (p["prompt_ids"], p["rejected_ids"]) for p in pairs
    ]
    for row, (prompt, response) in enumerate(rows):
        end = len(prompt) + len(response)
        assert batch["input_ids"][row].tolist() == prompt + response + [0] * (width - end)
        assert batch["attention_mask"][row].tolist() == [1] * end + [0] * (width - end)
        assert batch["response_mask"][row].tolist() == [False] * len(prompt) + [True] * len(response) + [
            False
        ] * (width - end)
