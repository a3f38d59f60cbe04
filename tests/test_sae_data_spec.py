"""``tools/train_sae.py`` reads the data ``lit-align fit`` reads (a subprocess, a tiny Llama): conversational rows,
a fit config's ``data:`` section with a column map, chat template and system prompt, ``--data.*`` settings, a
mixture; responses only or prompt + response. Token counts are checked against the chat template applied here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from lit_align.data import ChatRenderer
from tests.conftest import explicit_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}</s>"
    "{% else %}<|user|>{{ m['role'] }}: {{ m['content'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SYSTEM = "Answer in one short sentence."


def conversations(n: int = 12) -> list[dict]:
    """UltraFeedback-binarized rows: a prompt string, and chosen/rejected conversations that repeat it."""
    rows = []
    for row in explicit_rows(n):
        user = {"role": "user", "content": row["prompt"]}
        rows.append({"prompt": row["prompt"],
                     "chosen": [user, {"role": "assistant", "content": row["chosen"].strip()}],
                     "rejected": [user, {"role": "assistant", "content": row["rejected"].strip()}]})
    return rows


def content_tokens(tokenizer, text: str) -> int:
    special = ChatRenderer(tokenizer).special_ids
    return sum(i not in special for i in tokenizer(text, add_special_tokens=False).input_ids)


def train_sae(tmp_path: Path, model_dir: str, tokenizer_dir: str, *data: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "tools" / "train_sae.py"), "--model", model_dir, "--tokenizer",
               tokenizer_dir, "--layer", "0", "--output", str(tmp_path / "sae"), "--d-sae", "64", "--k", "4",
               "--max-steps", "2", "--accelerator", "cpu", *data]
    return subprocess.run(command, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=300, check=False)


def tokens_read(tmp_path: Path) -> int:
    metrics = json.loads((tmp_path / "sae" / "metrics.json").read_text())
    return metrics["train_tokens"] + metrics["val_tokens"]


@pytest.mark.parametrize("text", ["prompt_and_response", "responses"])
def test_conversational_jsonl_is_rendered_with_the_chat_template(tmp_path, model_dir, tokenizer_dir, text):
    rows = conversations()
    data = write_jsonl(tmp_path / "ultrafeedback.jsonl", rows)
    text_flag = ["--text", text] if text == "responses" else []  # prompt + response is the default
    result = train_sae(tmp_path, model_dir, tokenizer_dir, "--data", str(data), *text_flag)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "read as conversational): kept 12 of 12 pairs" in result.stderr
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    full = sum(content_tokens(tokenizer, tokenizer.apply_chat_template(row["chosen"], tokenize=False)) for row in rows)
    prompts = sum(content_tokens(tokenizer, tokenizer.apply_chat_template(
        row["chosen"][:1], tokenize=False, add_generation_prompt=True)) for row in rows)
    assert tokens_read(tmp_path) == (full if text == "prompt_and_response" else full - prompts)


def test_fit_config_data_section_with_columns_template_and_system_prompt(tmp_path, model_dir, tokenizer_dir):
    rows = [{"q": row["chosen"][:1], "good": row["chosen"][1:], "bad": row["rejected"][1:]} for row in conversations()]
    data = write_jsonl(tmp_path / "mapped.jsonl", rows)
    config = {
        "trainer": {"max_steps": 10},
        "model": {"policy": {"path": model_dir}},
        "data": {"class_path": "lit_align.data.PreferenceDataModule",
                 "init_args": {"path": str(data), "columns": {"prompt": "q", "chosen": "good", "rejected": "bad"},
                               "chat_template": TEMPLATE, "system_prompt": SYSTEM, "val_fraction": 0.25}},
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    result = train_sae(tmp_path, model_dir, tokenizer_dir, "--config", "fit.yaml", "--data.val_fraction=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mapped.jsonl, read as conversational): kept 12 of 12 pairs" in result.stderr
    assert "held out" not in result.stderr  # the command line's setting wins over the config's
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    system = {"role": "system", "content": SYSTEM}
    rendered = [tokenizer.apply_chat_template([system, *row["q"], *row["good"]], chat_template=TEMPLATE,
                                              tokenize=False) for row in rows]
    assert SYSTEM in rendered[0] and "<|user|>user: Question 0" in rendered[0]
    assert tokens_read(tmp_path) == sum(content_tokens(tokenizer, text) for text in rendered)


def test_a_mixture_reads_every_source(tmp_path, model_dir, tokenizer_dir):
    conversational = write_jsonl(tmp_path / "conv.jsonl", conversations(8))
    explicit = write_jsonl(tmp_path / "explicit.jsonl", explicit_rows(8))
    mixture = {"class_path": "lit_align.data.Mixture",
               "init_args": {"stopping_strategy": "all_exhausted",
                             "sources": [{"path": str(conversational)}, {"path": str(explicit)}]}}
    result = train_sae(tmp_path, model_dir, tokenizer_dir, f"--data.tokenizer={tokenizer_dir}",
                       f"--data.source={json.dumps(mixture)}", "--data.val_fraction=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train[0] (" in result.stderr and "read as conversational): kept 8 of 8 pairs" in result.stderr
    assert "train[1] (" in result.stderr and "read as explicit): kept 8 of 8 pairs" in result.stderr
    assert tokens_read(tmp_path) > 0


def test_unusable_data_is_one_error_line(tmp_path, model_dir, tokenizer_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", explicit_rows(8))
    result = train_sae(tmp_path, model_dir, tokenizer_dir, "--data", str(data), "--data.columns={prompt: question}")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "question" in line and "prompt" in line, line
