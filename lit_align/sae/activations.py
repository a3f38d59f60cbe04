"""Residual activations of a policy over a text corpus: the training data of an SAE.

Every non-padding, non-special token of every text contributes one row (special tokens such as BOS carry
outlier activations an SAE should not spend features on). Rows are kept on the CPU in the model's dtype.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from lit_align.sae.hooks import residual_stream


def read_texts(path: str | Path, limit: int | None = None) -> list[str]:
    """Texts of a ``.jsonl`` (or ``.jsonl.gz``) file, one per row: ``text`` if present, else ``prompt`` +
    ``chosen``, else ``chosen`` (HH-RLHF rows hold the whole dialogue in ``chosen``).

    Args:
        path: the file.
        limit: read at most this many rows.
    """
    texts = []
    for row in _rows(Path(path)):
        if limit is not None and len(texts) >= limit:
            break
        if "text" in row:
            texts.append(row["text"])
        elif "chosen" in row:
            texts.append(row.get("prompt", "") + row["chosen"])
        else:
            raise ValueError(f"{path}: a row has neither 'text' nor 'chosen': keys {sorted(row)}")
    return texts


def first_row(path: str | Path) -> dict | None:
    """The first row of a ``.jsonl`` (or ``.jsonl.gz``) file, ``None`` when it has none."""
    return next(_rows(Path(path)), None)


def _rows(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not a JSON object ({error.msg}); the texts must be a .jsonl "
                                 "or .jsonl.gz file, one JSON object per line") from None


def collect_activations(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    layer: int,
    batch_size: int = 8,
    max_length: int = 256,
    max_tokens: int | None = None,
) -> Tensor:
    """Residual activations at the output of decoder layer ``layer`` for every content token of ``texts``.

    Args:
        model: the policy (``transformers`` causal LM, on any device); only layers ``0..layer`` run.
        tokenizer: its tokenizer, with a pad token.
        texts: the corpus.
        layer: decoder layer index.
        batch_size: texts per forward pass.
        max_length: truncate each text to this many tokens.
        max_tokens: stop once this many rows are collected.

    Returns:
        ``(tokens, hidden)`` on the CPU, in the model's dtype.
    """
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, return_special_tokens_mask=True)
    sequences = [
        TokenSequence(ids, [not special for special in mask])
        for ids, mask in zip(encoded["input_ids"], encoded["special_tokens_mask"], strict=True)
    ]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return collect_token_activations(model, sequences, layer, pad_id, batch_size, max_tokens)


class TokenSequence(NamedTuple):
    """One sequence's token ids and, per token, whether its activation is kept (content tokens only)."""

    ids: list[int]
    keep: list[bool]


@torch.no_grad()
def collect_token_activations(
    model: nn.Module,
    sequences: Sequence[TokenSequence],
    layer: int,
    pad_id: int,
    batch_size: int = 8,
    max_tokens: int | None = None,
) -> Tensor:
    """Residual activations at the output of decoder layer ``layer`` at the kept tokens of already tokenised
    sequences (right-padded with ``pad_id``, padding masked out of attention).

    Returns:
        ``(tokens, hidden)`` on the CPU, in the model's dtype; at most ``max_tokens`` rows.
    """
    device = next(model.parameters()).device
    chunks: list[Tensor] = []
    collected = 0
    for start in range(0, len(sequences), batch_size):
        ids, attention, keep = _padded(sequences[start : start + batch_size], pad_id)
        residual = residual_stream(model, layer, ids.to(device), attention.to(device))
        chunks.append(residual[keep.to(device)].cpu())
        collected += chunks[-1].shape[0]
        if max_tokens is not None and collected >= max_tokens:
            break
    if not chunks:
        raise ValueError("no texts to collect activations from")
    return torch.cat(chunks)[:max_tokens]


def _padded(batch: Sequence[TokenSequence], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(ids, attention_mask, keep)`` of a batch, each ``(batch, longest)``, right-padded."""
    width = max(len(sequence.ids) for sequence in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros(len(batch), width, dtype=torch.long)
    keep = torch.zeros(len(batch), width, dtype=torch.bool)
    for row, sequence in enumerate(batch):
        ids[row, : len(sequence.ids)] = torch.tensor(sequence.ids, dtype=torch.long)
        attention[row, : len(sequence.ids)] = 1
        keep[row, : len(sequence.keep)] = torch.tensor(sequence.keep, dtype=torch.bool)
    return ids, attention, keep
