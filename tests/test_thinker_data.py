"""Reasoning files in the authors' formats, their encoding for latent thoughts, answer extraction and voting."""

from __future__ import annotations

import json

import pytest
import torch

from lit_align.tasks.tokenizer import train_tokenizer
from lit_align.thinker import ReasoningDataModule, ThoughtMarkers, extract_answer, majority_vote
from lit_align.thinker.encoding import collate, encode
from lit_align.thinker.formats import load_examples
from lit_align.thinker.task import ArithmeticSettings, build_tokenizer, make_examples, oracle_slots

GSM8K_ROWS = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72"},
    {"question": "Weng earns $12 an hour. How much for 50 minutes?",
     "answer": "How much per minute? ** 12/60 = $<<12/60=0.2>>0.2\nHow much for 50? ** 0.2 x 50 = $10\n#### 1,000"},
    {"question": "no final line", "answer": "just a step"},
    {"answer": "#### 3"},
]
STRATEGYQA_ROWS = [
    {"qid": "a", "question": "Could the members of The Police perform lawful arrests?", "answer": False,
     "facts": "The members of The Police were musicians.\nOnly officers can perform lawful arrests."},
    {"qid": "b", "question": "Is a yard longer than a meter?", "answer": "maybe", "facts": ""},
]


def write_lines(path, rows, extra: str = "") -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + extra, encoding="utf-8")
    return str(path)


def test_gsm8k_rows_give_steps_and_answer_and_bad_rows_are_counted(tmp_path):
    examples, skipped = load_examples(write_lines(tmp_path / "g.jsonl", GSM8K_ROWS, "{not json\n"), "gsm8k")
    assert skipped == 3
    assert examples[0].answer == "72" and len(examples[0].steps) == 2
    assert examples[0].steps[1] == "Natalia sold 48+24 = <<48+24=72>>72 clips."
    assert examples[1].answer == "1000" and examples[1].steps[0].startswith("How much per minute? **")


def test_strategyqa_jsonl_and_json_array(tmp_path):
    examples, skipped = load_examples(write_lines(tmp_path / "s.jsonl", STRATEGYQA_ROWS), "strategyqa")
    assert skipped == 1 and examples[0].answer == "no" and len(examples[0].steps) == 2
    array = tmp_path / "test.json"
    array.write_text(json.dumps([{"qid": "c", "question": "Is water wet?", "answer": True}]), encoding="utf-8")
    examples, skipped = load_examples(array, "strategyqa")
    assert skipped == 0 and examples[0].answer == "yes" and examples[0].steps == ()
    with pytest.raises(ValueError, match="unknown format"):
        load_examples(array, "aqua")


@pytest.fixture
def word_tokenizer(tmp_path):
    texts = [row["question"] + " " + row["answer"] for row in GSM8K_ROWS[:2]]
    tokenizer = train_tokenizer(texts)
    markers = ThoughtMarkers()
    tokenizer.add_tokens([markers.placeholder, markers.begin, markers.finish, markers.step_end,
                          *(markers.query.format(i=i) for i in range(3))], special_tokens=True)
    tokenizer.save_pretrained(tmp_path / "tok")
    return str(tmp_path / "tok")


def test_datamodule_encodes_slots_anchor_and_step_ends(tmp_path, word_tokenizer):
    path = write_lines(tmp_path / "g.jsonl", GSM8K_ROWS)
    data = ReasoningDataModule(word_tokenizer, path, path, num_thoughts=3, batch_size=2)
    data.setup("fit")
    tokenizer, batch = data.tokenizer, next(iter(data.train_dataloader()))
    ids = lambda token: tokenizer.convert_tokens_to_ids(token)  # noqa: E731
    for b in range(2):
        assert (batch["input_ids"][b].gather(0, batch["thought_slots"][b]) == ids("<think>")).all()
        assert (batch["prompt_ids"][b].gather(0, batch["prompt_slots"][b]) == ids("<think>")).all()
        assert batch["gen_ids"][b, batch["q_end"][b]] == ids("<end>")
        ends = batch["step_ends"][b][batch["step_mask"][b]]
        assert len(ends) == 2 and (batch["gen_steps_ids"][b, ends] == ids("<end>")).all()
        queries = batch["gen_steps_ids"][b, batch["gen_steps_slots"][b]]
        assert queries.tolist() == [ids(f"<t{i}>") for i in range(3)]
        labelled = batch["labels"][b][batch["labels"][b] != -100]
        assert "####" in tokenizer.decode(labelled) and labelled[-1] == tokenizer.eos_token_id
        assert batch["labels"][b, : batch["thought_slots"][b, -1] + 2].eq(-100).all()
    assert batch["prompt_mask"][:, -1].all()  # left-padded for generation


def test_datamodule_drops_long_examples_and_rejects_missing_markers(tmp_path, word_tokenizer):
    path = write_lines(tmp_path / "g.jsonl", GSM8K_ROWS)
    data = ReasoningDataModule(word_tokenizer, path, path, num_thoughts=3, max_length=30)
    data.setup("fit")
    assert data.dropped["train"] >= 1 and len(data.rows["train"]) + data.dropped["train"] == 2
    with pytest.raises(ValueError, match="not a token"):
        ReasoningDataModule(word_tokenizer, path, path, num_thoughts=5).setup("fit")


def test_task_examples_and_oracle_hints():
    settings = ArithmeticSettings(modulus=7, steps=3)
    example = make_examples(1, settings, seed=0)[0]
    first, *later = example.question.split()
    current = int(first[1])
    for step, word in zip(example.steps, [f"s1{first[2:]}", *later], strict=True):
        name, operand = word[2:5], int(word[5:])
        current = {"add": current + operand, "sub": current - operand, "mul": current * operand}[name] % 7
        assert step == str(current)
    assert example.answer == example.steps[-1]
    markers = ThoughtMarkers()
    tokenizer = build_tokenizer(settings, markers)
    batch = collate([encode(example, tokenizer, markers.ids(tokenizer, 3))], tokenizer.pad_token_id)
    hinted = oracle_slots(batch, batch["input_ids"], batch["thought_slots"])
    hints = tokenizer.convert_ids_to_tokens(hinted[0, batch["thought_slots"][0]].tolist())
    assert hints == [example.steps[0], example.steps[1], example.steps[1]]  # never the answer itself
    assert torch.equal(hinted[0, :5], batch["input_ids"][0, :5])


def test_answer_extraction_and_majority_vote():
    assert extract_answer("so she has #### 1,000.") == "1000"
    assert extract_answer("the total is 12 then 15") == "15"
    assert extract_answer("#### ") is None and extract_answer("no number") is None
    assert majority_vote(["3", "4", None, "4", "3", "4"]) == "4"
    assert majority_vote(["7", "8"]) == "7"
    assert majority_vote([None, None]) is None
