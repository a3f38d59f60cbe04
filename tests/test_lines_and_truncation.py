"""Issue 23, items 4 and 5: lines are lines, and truncation keeps the frame.

4. A JSON Lines file is split on ``\\n`` only (a row holding U+2028 is one row); an invalid UTF-8 line is a bad
   line like malformed JSON, named by its number and counted (``bad_utf8``) with ``skip_bad_lines``; rows kept
   plus lines skipped are the lines read.
5. ``keep_end`` (and ``keep_start``) truncation of a prompt keeps its BOS, the chat template's first header and
   the generation prompt, and cuts the text between them; ``prompt_frame_kept`` counts it, and a frame that does
   not fit is a counted skip (``prompt_frame_too_long``).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer

from lit_align.data import PreferenceDataModule
from tests.conftest import explicit_rows, hh_rows
from tests.test_chat_templates import QWEN_SYSTEM, build_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def data_module(path, tokenizer_dir, **kwargs) -> PreferenceDataModule:
    dm = PreferenceDataModule(str(path), str(tokenizer_dir), **{"val_fraction": 0, **kwargs})
    dm.setup("fit")
    return dm


def row_line(row: dict) -> bytes:
    return json.dumps(row, ensure_ascii=False).encode("utf-8")


def write_lines(path: Path, lines: list[bytes]) -> Path:
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


GOOD = [row_line(row) for row in explicit_rows(4)]
SEPARATORS = {"prompt": "First line\u2028second\u2029third\x85fourth?", "chosen": " Yes.", "rejected": " No."}
BROKEN_WITH_SEPARATORS = '{"prompt": "a\u2028b", "chosen": \u2028 "c\u2029", '.encode()
LATIN1 = b'{"prompt": "caf\xe9?", "chosen": " a", "rejected": " b"}'


# ---- 4. lines are lines -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz"])
def test_a_row_holding_line_separators_is_one_row_and_a_broken_line_is_one_bad_line(tmp_path, tokenizer_dir, name):
    """U+2028, U+2029 and U+0085 are allowed raw inside JSON strings: the row is kept whole; the broken line
    (holding them too) is named by its own number and counted once."""
    lines = [GOOD[0], row_line(SEPARATORS), GOOD[1], BROKEN_WITH_SEPARATORS, GOOD[2], GOOD[3]]
    path = write_lines(tmp_path / name, lines)
    with pytest.raises(ValueError, match=r": line 4 is not valid JSON .*skip_bad_lines") as info:
        data_module(path, tokenizer_dir)
    assert info.type is ValueError and str(path) in str(info.value)
    dm = data_module(path, tokenizer_dir, skip_bad_lines=True)
    report = dm.report["train"]
    assert dict(report["skipped"]) == {"bad_json": 1} and report["rows"]["total"] == len(lines)
    assert len(dm.train_set) == 5
    prompts = [AutoTokenizer.from_pretrained(tokenizer_dir).decode(ids) for ids in dm.train_set["prompt_ids"]]
    assert SEPARATORS["prompt"] in prompts


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz"])
def test_an_invalid_utf8_line_is_a_bad_line_named_and_counted(tmp_path, tokenizer_dir, name):
    lines = [GOOD[0], GOOD[1], LATIN1, GOOD[2], b'{"prompt": ', b"", GOOD[3]]  # the blank line is no row
    path = write_lines(tmp_path / name, lines)
    with pytest.raises(ValueError, match=r": line 3 is not valid UTF-8 .*skip_bad_lines.*bad_utf8") as info:
        data_module(path, tokenizer_dir)
    assert info.type is ValueError and "Arrow" not in str(info.value)
    dm = data_module(path, tokenizer_dir, skip_bad_lines=True)
    report = dm.report["train"]
    assert dict(report["skipped"]) == {"bad_utf8": 1, "bad_json": 1}
    assert report["rows"]["total"] == 6 and len(dm.train_set) == 4  # kept + skipped = the non-blank lines


def test_the_cli_names_the_invalid_utf8_line_and_trains_past_it_when_told(tmp_path, model_dir, tokenizer_dir):
    """What a user sees: one line naming the file and the line (exit 1); with skip_bad_lines the run trains and
    logs the skip under its reason."""
    path = write_lines(tmp_path / "pairs.jsonl", [row_line(row) for row in explicit_rows(8)] + [LATIN1])
    config = {
        "trainer": {"accelerator": "cpu", "max_steps": 1, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path)},
        "model": {"objective": {"class_path": "lit_align.objectives.DPO"}, "policy": {"path": model_dir}},
        "data": {"class_path": "lit_align.data.PreferenceDataModule",
                 "init_args": {"path": str(path), "tokenizer": tokenizer_dir, "batch_size": 2, "val_fraction": 0,
                               "max_length": 64, "max_prompt_length": 32}},
    }
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(config))

    def fit(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "lit_align", "fit", "--config", str(tmp_path / "dpo.yaml"), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)

    refused = fit()
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: could not read preference data from '{path}'")
    assert f"{path}: line 9 is not valid UTF-8" in last and "bad_utf8" in last
    trained = fit("--data.skip_bad_lines=true")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "kept 8 of 9 pairs; skipped: bad_utf8=1" in trained.stdout + trained.stderr


# ---- 5. truncation keeps the frame --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bos_tokenizer_dir(tokenizer_dir, tmp_path_factory) -> str:
    """The test tokenizer, adding BOS (``<s>``) to every text it tokenises with special tokens, as Llama's do."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    target = tmp_path_factory.mktemp("bos_tokenizer")
    tokenizer.save_pretrained(target)
    assert AutoTokenizer.from_pretrained(target)("Hi")["input_ids"][0] == tokenizer.bos_token_id
    return str(target)


def framed(prompt: list[int], head: list[int], tail: list[int]) -> bool:
    return prompt[: len(head)] == head and prompt[len(prompt) - len(tail) :] == tail


def expected_cut(full: list[int], head: int, tail: int, keep: int, mode: str) -> list[int]:
    """The frame of ``full`` and the end (or start) of the text between, ``keep`` tokens in all."""
    inside, room = full[head : len(full) - tail], keep - head - tail
    inside = inside[len(inside) - room :] if mode == "keep_end" else inside[:room]
    return full[:head] + inside + full[len(full) - tail :]


@pytest.mark.parametrize("mode", ["keep_end", "keep_start"])
def test_hh_prompts_keep_bos_human_and_assistant_headers(tmp_path, bos_tokenizer_dir, mode):
    """200 HH pairs at max_prompt_length 48: every cut prompt starts with BOS + "\\n\\nHuman:" and ends with
    "\\n\\nAssistant:" (before: keep_end cut BOS and the header off 158 of 199, keep_start the generation
    prompt)."""
    path = tmp_path / "hh200.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in hh_rows(200))
    tokenizer = AutoTokenizer.from_pretrained(bos_tokenizer_dir)
    head = tokenizer("\n\nHuman:")["input_ids"]
    tail = tokenizer("\n\nAssistant:", add_special_tokens=False)["input_ids"]
    assert head[0] == tokenizer.bos_token_id
    full = data_module(path, bos_tokenizer_dir, max_length=4096, max_prompt_length=2048).train_set["prompt_ids"]
    dm = data_module(path, bos_tokenizer_dir, max_length=256, max_prompt_length=48, truncation_mode=mode)
    cut = dm.train_set["prompt_ids"]
    assert len(cut) == len(full) == 199 and all(framed(prompt, head, tail) for prompt in full)
    long = [i for i, prompt in enumerate(full) if len(prompt) > 48]
    assert len(long) > 100
    assert all(framed(prompt, head, tail) and len(prompt) <= 48 for prompt in cut)
    assert all(cut[i] == expected_cut(full[i], len(head), len(tail), 48, mode) for i in long)
    notes = dm.report["train"]["notes"]
    assert notes["prompt_truncated"] == notes["prompt_frame_kept"] == len(long)


FRAMES = {  # the public templates' frame around a conversation: (first header, generation prompt)
    "qwen2.5": (QWEN_SYSTEM + "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"),
    "llama3": ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n",
               "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    "gemma": ("<bos><start_of_turn>user\n", "<end_of_turn>\n<start_of_turn>model\n"),
}


def conversations(n: int) -> list[dict]:
    """Multi-turn conversations, long enough to be cut."""
    rows = []
    for i in range(n):
        turns = [{"role": "user", "content": f"Question {i}: " + "how was the film? " * (3 + i)},
                 {"role": "assistant", "content": "It was good and fine. " * 4},
                 {"role": "user", "content": f"And the book {i}? " * 5}]
        rows.append({"prompt": turns, "chosen": [{"role": "assistant", "content": "Great."}],
                     "rejected": [{"role": "assistant", "content": "Bad."}]})
    return rows


@pytest.mark.parametrize("family", FRAMES)
def test_chat_template_prompts_keep_the_first_header_and_the_generation_prompt(tmp_path, family):
    tokenizer = build_tokenizer(family)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    head, tail = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in FRAMES[family])
    keep = len(head) + len(tail) + 12
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in conversations(6)))
    full = data_module(path, tmp_path / "tokenizer", max_length=4096, max_prompt_length=2048)
    dm = data_module(path, tmp_path / "tokenizer", max_length=keep + 16, max_prompt_length=keep)
    before, cut = full.train_set["prompt_ids"], dm.train_set["prompt_ids"]
    assert all(framed(prompt, head, tail) and len(prompt) > keep for prompt in before)
    assert cut == [expected_cut(prompt, len(head), len(tail), keep, "keep_end") for prompt in before]
    assert dm.report["train"]["notes"]["prompt_frame_kept"] == 6


def test_a_frame_that_does_not_fit_is_a_counted_skip(tmp_path, tokenizer_dir):
    """HH's frame ("\\n\\nHuman:" ... "\\n\\nAssistant:") is 8 tokens: at max_prompt_length 8 no text fits, so
    long HH prompts are skipped as prompt_frame_too_long, not cut to a bare frame or a headless tail."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert len(tokenizer("\n\nHuman:\n\nAssistant:")["input_ids"]) == 8
    short = [{"prompt": "Q?", "chosen": " Yes.", "rejected": " No."},
             {"prompt": "Why?", "chosen": " A.", "rejected": " B."}]
    rows = short + hh_rows(3)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dm = data_module(path, tokenizer_dir, max_length=64, max_prompt_length=8)
    assert dict(dm.report["train"]["skipped"]) == {"prompt_frame_too_long": 3}
    assert len(dm.train_set) == 2

