"""Shared fixtures: a tiny tokenizer and a tiny Llama saved to disk, and small preference files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lit_align.tasks.tokenizer import train_bpe_tokenizer
from tests import outside_reads

outside_reads.install()

HH_FILE = Path(__file__).resolve().parents[1] / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TINY_LLAMA = dict(
    model_type="llama",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)

torch.set_num_threads(2)


def hh_rows(limit: int | None = None) -> list[dict]:
    with gzip.open(HH_FILE, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return rows[:limit] if limit else rows


def explicit_rows(n: int = 24) -> list[dict]:
    """Small, clean prompt/chosen/rejected rows."""
    words = ["good", "great", "fine", "bad", "awful", "nice", "plain", "odd"]
    return [
        {
            "prompt": f"Question {i}: how was the film?",
            "chosen": f" It was {words[i % 3]} and {words[(i + 1) % 3]}.",
            "rejected": f" It was {words[3 + i % 5]}.",
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> str:
    """A byte-level BPE tokenizer (vocab 512) trained on HH text, with EOS, pad and a chat template."""
    texts = [row["chosen"] for row in hh_rows(400)] + [json.dumps(explicit_rows())]
    wrapped = train_bpe_tokenizer(texts, vocab_size=512, extra_special_tokens=["<|user|>", "<|assistant|>"],
                                  chat_template=CHAT_TEMPLATE)
    target = tmp_path_factory.mktemp("tokenizer")
    wrapped.save_pretrained(target)
    return str(target)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer_dir) -> str:
    """A tiny random Llama (2 layers, hidden 32) saved with ``save_pretrained``."""
    torch.manual_seed(0)
    config = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    model = LlamaForCausalLM(LlamaConfig(vocab_size=512, pad_token_id=0, bos_token_id=1, eos_token_id=2, **config))
    target = tmp_path_factory.mktemp("model")
    model.save_pretrained(target)
    return str(target)


@pytest.fixture
def explicit_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", explicit_rows())
