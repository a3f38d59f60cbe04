"""The built-in CPU reasoning task: multi-step modular arithmetic whose intermediate results are the gold steps.

A question ``x3add5 s2mul2`` (modulus 11) means ``(3 + 5)·2 mod 11``; its gold steps are the intermediate values
``8 5`` and its answer ``5`` (the default modulus is 7). The first token holds the start value and the first
operation, each later token names its step, so the order is in the tokens themselves.
A tiny Llama base is pre-trained to answer ``#### 5`` from the question, with the thought slots holding, for a
share ``hint_rate`` of the examples, the intermediate values but the last (hints), and otherwise placeholders;
then it is frozen. The hints are soft (between the placeholder and the hint, see :func:`soft_hints`) so that the
base reads continuous thoughts smoothly. With the default ``hint_rate = 1`` it never learns the first step
itself: thoughts help exactly when they carry what the hints carry.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lit_align.tasks.tokenizer import train_tokenizer
from lit_align.thinker.encoding import ReasoningExample, ThoughtMarkers, collate, encode

log = logging.getLogger(__name__)
OPERATIONS = {"add": lambda v, a, m: (v + a) % m, "sub": lambda v, a, m: (v - a) % m, "mul": lambda v, a, m: v * a % m}


@dataclass
class ArithmeticSettings:
    """The task and its base model."""

    modulus: int = 7
    steps: int = 2
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 128
    pretrain_steps: int = 1500
    """Optimizer steps of the base's pre-training (batch 64, fresh examples)."""
    hint_rate: float = 1.0
    """Share of pre-training examples whose thought slots hold the intermediate values (below 1, the base also
    learns the task without hints, from the same questions, and thoughts have less to add)."""
    seed: int = 0


def make_examples(count: int, settings: ArithmeticSettings, seed: int) -> list[ReasoningExample]:
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        value = start = rng.randrange(settings.modulus)
        question, steps = [], []
        for step in range(1, settings.steps + 1):
            name, operand = rng.choice(sorted(OPERATIONS)), rng.randrange(1, settings.modulus)
            value = OPERATIONS[name](value, operand, settings.modulus)
            question.append(f"x{start}{name}{operand}" if step == 1 else f"s{step}{name}{operand}")
            steps.append(str(value))
        examples.append(ReasoningExample(" ".join(question), tuple(steps), steps[-1]))
    return examples


def build_tokenizer(settings: ArithmeticSettings, markers: ThoughtMarkers) -> PreTrainedTokenizerFast:
    """Word-level: every value, start token and step operation is one token; markers are special tokens."""
    m = settings.modulus
    words = [*map(str, range(m)), markers.answer_prefix]
    words += [f"x{v}{name}{a}" for v in range(m) for name in OPERATIONS for a in range(1, m)]
    words += [f"s{s}{name}{a}" for s in range(2, settings.steps + 1) for name in OPERATIONS for a in range(1, m)]
    tokenizer = train_tokenizer([" ".join(words)])
    queries = [markers.query.format(i=i) for i in range(max(8, settings.steps))]
    tokenizer.add_tokens([markers.placeholder, markers.begin, markers.finish, markers.step_end, *queries],
                         special_tokens=True)
    return tokenizer


def oracle_slots(batch: dict[str, Tensor], input_ids: Tensor, slots: Tensor) -> Tensor:
    """``input_ids`` with thought slot j holding the token of gold step ``min(j, S − 2)``: the hints the base
    was pre-trained with, every intermediate value but the answer (the base always does the last operation).
    Each step is one token, just before its ``⟨end⟩``."""
    steps = batch["gen_steps_ids"].gather(1, batch["step_ends"] - 1)
    last = (batch["step_mask"].sum(-1, keepdim=True) - 2).clamp(min=0)
    index = torch.minimum(torch.arange(slots.shape[1]).expand_as(slots), last)
    return input_ids.scatter(1, slots, steps.gather(1, index))


def soft_hints(
    embedding: torch.nn.Module, batch: dict[str, Tensor], hinted: Tensor, generator: torch.Generator
) -> Tensor:
    """Input embeddings whose thought slots hold, where ``hinted``, a soft hint on the line from the placeholder
    ``e(p)`` to the hint ``e(h)``: ``(1 − α) e(p) + α e(h)``, ``α = 1`` half the time, else ``α ~ U(0.5, 1)``.
    The base learns to read a slot that moves continuously towards a hint, which is where thoughts start
    (``thought_init="placeholder"``); exact hints alone leave it a readout that gradients cannot find."""
    ids, slots = batch["input_ids"], batch["thought_slots"]
    placeholders = embedding(ids.gather(1, slots))
    hints = embedding(oracle_slots(batch, ids, slots).gather(1, slots))
    alpha = 0.5 + 0.5 * torch.rand(len(ids), 1, 1, generator=generator)
    alpha = torch.where(torch.rand(len(ids), 1, 1, generator=generator) < 0.5, torch.ones_like(alpha), alpha)
    soft = ((1 - alpha) * placeholders + alpha * hints).detach()
    slot_values = torch.where(hinted[:, None, None], soft, placeholders)
    return embedding(ids).scatter(1, slots[..., None].expand_as(slot_values), slot_values)


def pretrain_base(
    directory: str | Path, settings: ArithmeticSettings, num_thoughts: int, markers: ThoughtMarkers | None = None
) -> Path:
    """Build, pre-train and save the base and its tokenizer in ``directory``, unless it holds this base already."""
    directory, markers = Path(directory), markers or ThoughtMarkers()
    stamp = json.dumps({"settings": asdict(settings), "markers": asdict(markers), "thoughts": num_thoughts},
                       sort_keys=True)
    if (directory / "task.json").is_file() and (directory / "task.json").read_text() == stamp:
        return directory
    tokenizer = build_tokenizer(settings, markers)
    marker_ids = markers.ids(tokenizer, num_thoughts)
    pool = make_examples(min(20000, 64 * settings.pretrain_steps), settings, 10**6)
    rows = [encode(example, tokenizer, marker_ids, markers.answer_prefix) for example in pool]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=settings.hidden_size, intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.layers, num_attention_heads=settings.heads, max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(settings.pretrain_steps):
        picked = torch.randint(len(rows), (64,), generator=generator).tolist()
        batch = collate([rows[i] for i in picked], tokenizer.pad_token_id)
        hinted = torch.rand(64, generator=generator) < settings.hint_rate
        embeddings = soft_hints(model.get_input_embeddings(), batch, hinted, generator)
        loss = model(inputs_embeds=embeddings, attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 500 == 0:
            log.info("base pre-training step %d: loss %.3f", step, loss.item())
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "task.json").write_text(stamp)
    return directory
