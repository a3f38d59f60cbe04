"""LTA-Thinker reads the common reasoning layouts through ``lit-align fit`` (a subprocess, a tiny base): GSM8K's
``#### answer``, a ``steps`` list with an ``answer``, and a column map; rows that fit no layout are counted skips
with their reason, and a file with no usable row is one ``error:`` line, never Lightning's ``num_samples=0``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from lit_align.tasks.tokenizer import train_tokenizer
from lit_align.thinker import ThoughtMarkers

ROOT = Path(__file__).resolve().parents[1]
NUM_THOUGHTS = 2
QUESTIONS = [(f"Tom has {a} apples and buys {b} more. How many now?", a, b) for a, b in
             [(3, 4), (5, 2), (7, 1), (2, 6), (4, 4), (1, 8), (6, 3), (9, 2)]]
GSM8K = [{"question": q, "answer": f"He has {a} + {b} = {a + b} apples.\n#### {a + b}"} for q, a, b in QUESTIONS]
STEPS = [{"question": q, "steps": [f"He starts with {a}.", f"{a} + {b} = {a + b}."], "answer": a + b}
         for q, a, b in QUESTIONS]
MAPPED = [{"problem": q, "rationale": f"{a} + {b} = {a + b}", "solution": f"#### {a + b}"} for q, a, b in QUESTIONS]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny Llama base whose tokenizer holds the thought markers as single tokens."""
    folder = tmp_path_factory.mktemp("thinker_base")
    tokenizer = train_tokenizer([row["question"] + " " + row["answer"] for row in GSM8K])
    markers = ThoughtMarkers()
    tokenizer.add_tokens([markers.placeholder, markers.begin, markers.finish, markers.step_end,
                          *(markers.query.format(i=i) for i in range(NUM_THOUGHTS))], special_tokens=True)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def fit(tmp_path: Path, base: Path, rows: list[dict], **data) -> subprocess.CompletedProcess:
    """``python -m lit_align fit`` on a thinker config over ``rows`` (train and validation), 2 steps on the CPU."""
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    config = {
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "val_check_interval": 2, "logger": False,
                    "enable_checkpointing": False, "callbacks": [], "default_root_dir": str(tmp_path / "run"),
                    "enable_progress_bar": False, "enable_model_summary": False},
        "model": {"class_path": "lit_align.thinker.LatentThoughtModule",
                  "init_args": {"base": {"path": str(base)}, "gold_steps_in_prompt": False}},
        "data": {"class_path": "lit_align.thinker.ReasoningDataModule",
                 "init_args": {"tokenizer": str(base), "train_path": path, "val_path": path,
                               "num_thoughts": NUM_THOUGHTS, "batch_size": 4, **data}},
    }
    (tmp_path / "thinker.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config", str(tmp_path / "thinker.yaml")],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.mark.parametrize(("rows", "data", "read_as"), [
    (GSM8K, {}, "read as gsm8k"),
    (STEPS, {}, "read as steps"),
    (MAPPED, {"columns": {"question": "problem", "answer": "solution"}}, "read as gsm8k"),
    (MAPPED, {"columns": {"question": "problem", "answer": "solution", "steps": "rationale"}}, "read as steps"),
], ids=["gsm8k", "steps_list", "columns_gsm8k", "columns_steps"])
def test_fit_trains_on_each_reasoning_layout(tmp_path, base, rows, data, read_as):
    result = fit(tmp_path, base, rows + [{"question": "no answer here"}], **data)
    assert result.returncode == 0, result.stderr[-3000:]
    report = next(line for line in result.stderr.splitlines() if line.startswith("train ("))
    assert read_as in report and f"kept {len(rows)} of {len(rows) + 1} rows" in report
    assert "skipped: missing_field:" in report


def test_no_usable_row_is_one_error_line_naming_the_counts_and_layouts(tmp_path, base):
    rows = [{"question": q, "solution": f"#### {a + b}"} for q, a, b in QUESTIONS] + [{"answer": "#### 3"}]
    result = fit(tmp_path, base, rows)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "num_samples" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: no usable examples in the train data: train (")
    assert "rows.jsonl" in line and "read as gsm8k" in line and "kept 0 of 9 rows" in line
    assert "missing_field:answer=8" in line and "missing_field:question=1" in line and "columns" in line


def test_skips_are_counted_by_reason(tmp_path):
    from lit_align.thinker.formats import read_examples  # here, so the tests above run against any version

    rows = [STEPS[0], GSM8K[0], {"question": "q", "answer": "just a step"}, {"question": "q", "steps": "a\nb",
            "answer": "1,000"}, {"question": "q", "steps": [1], "answer": "2"}, {"question": "", "answer": "#### 1"},
            {"question": "q", "answer": "maybe", "facts": "x"}, {"question": "q", "answer": True}, [1, 2]]
    examples, report = read_examples(write_jsonl(tmp_path / "r.jsonl", rows), "auto")
    assert [e.answer for e in examples] == ["7", "7", "1000", "yes"]
    assert examples[0].steps == ("He starts with 3.", "3 + 4 = 7.") and examples[2].steps == ("a", "b")
    assert report.skipped == {"no_final_answer": 1, "bad_steps:steps": 1, "empty_question": 1,
                              "not_a_boolean:answer": 1, "not_an_object": 1}
    assert report.layouts == {"steps": 3, "gsm8k": 3, "strategyqa": 2}
