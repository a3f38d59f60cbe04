"""Training speed of DPO three ways on the same model, data and settings: lit-align, TRL's ``DPOTrainer`` and a
minimal plain-PyTorch loop (the practical floor), plus lit-align from the offline reference store.

Setup (once per run, in ``--workdir``): a byte-level BPE tokenizer trained on the pairs' text; a Llama-architecture
model of about 16M parameters, random init, ``save_pretrained`` (every arm loads it with ``from_pretrained``); the
HH-RLHF pairs split at the last ``"\\n\\nAssistant:"`` into prompt/chosen/rejected strings, kept when
lit-align's tokenisation fits them in ``--max-length``/``--max-prompt-length`` untruncated (so TRL, which
truncates differently, sees the very same token ids), ``--pairs`` of them at random.

Every arm trains on the same batches in the same order: lit-align's own seeded order (``PreferenceDataModule``'s
sampler), written out for TRL (``train_sampling_strategy="sequential"``) and the plain loop. Each arm runs in a
fresh process (honest peak RSS, ``ru_maxrss``), the arms alternate over ``--rounds`` rounds, and a step is timed
from the end of the previous one to its own end (data loading, logging and optimizer included):

- ``plain``: ``model.model(...)`` hidden states, response positions through the LM head, ``gather - logsumexp``,
  reference forward under ``no_grad``, the DPO loss, ``AdamW``; nothing else.
- ``plain-packed``: the same loop on lit-align's own packed rows (``pack_pairs``: each pair once as
  ``[prompt | chosen | rejected]``, rejected tokens blind to the chosen, the pairs blind to each other), joined into
  one row and attended by pair as lit-align does on SDPA (``one_row``, ``lit_align.models.pair_attention``: one SDPA
  call per pair with its own mask, written out here), the response states gathered at the row's response grid: the
  floor of lit-align's default layout, against which the ``lit-align`` arm is measured. ``plain-packed-dense`` and
  ``lit-align-dense``: the same before attention by pair, SDPA over each packed row of the data module's default
  ``pack_row_tokens`` with the row's whole mask (the blocks between pairs computed, then masked out).
- ``lit-align``: ``AlignmentModule(DPO)`` + ``PreferenceDataModule`` + ``AlignmentTrainer``, with what a user
  gets by default (prompt-shared, padding-free pairs; TensorBoard logger, progress bar, non-finite step guard);
  checkpointing off. ``lit-align-padded``: the same in the padded layout (``AlignmentModule(packing=False)``),
  lit-align before prompt sharing.
- ``lit-align-offline`` (``-padded``): the same with ``OfflineStore`` (filled once by
  ``AlignmentTrainer.precompute``, timed).
- ``lit-align-grouped`` (``-padded``): the same with length-grouped batches
  (``PreferenceDataModule(group_by_length=...)``), and ``plain-packed-grouped`` / ``plain-grouped``, the floors
  (packed / padded) on those same batches.
- ``lit-align-rowsN`` (added by ``--row-tokens N ...``; ``0``: one row): ``lit-align-dense`` with
  ``pack_row_tokens=N``. Where attention runs over a packed row's whole length (eager, compiled layers) the row size
  trades attention (``attention/token``: rows times their length squared, per counted token; by pair, each pair's
  length squared) against the rows' end padding (``positions/token``); by pair the rows are joined into one, so
  their size does not matter there.
- ``lit-align-bf16``: ``lit-align`` with ``trainer.precision: bf16-mixed`` (bf16 autocast over fp32 weights);
  ``lit-align-bf16-master``: bf16 weights with fp32 master weights (``ModelParallelStrategy`` on one process with
  ``FSDPMixedPrecision``: each unit gathered and computed in bf16, the optimizer on the fp32 shards);
  ``trl-bf16``: TRL matched with ``bf16=True`` (the same autocast); each compared with its fp32 arm's first
  steps, as is ``trl-defaults``.

Every arm counts the same tokens: each pair's prompt + chosen and prompt + rejected, padding excluded (a packed
arm computes each prompt once, yet is credited with it twice, so all arms are measured on the same work). The
``positions/token`` column is what an arm computes per counted token: its padded (or packed) batch size over the
tokens.
- ``trl``: ``DPOTrainer`` at matched settings: fp32, no gradient checkpointing, ``adamw_torch_fused`` (the AdamW
  implementation lit-align's default optimizer runs, :class:`lit_align.schedule.AdamW`), constant learning rate, no
  gradient clipping, no checkpoint saving.
- The step's own overheads, before and after (issue 27): every arm above runs torch's fused AdamW (the plain loops
  too, so the floors stay matched) and lit-align's non-finite guard checks one fused scalar, the total gradient
  norm. ``lit-align-unfused`` runs ``torch.optim.AdamW`` as torch picks it (one tensor at a time on CPU: lit-align's
  earlier default), ``lit-align-per-tensor-guard`` the guard's earlier check (``isfinite(grad).all()`` of every
  gradient), ``lit-align-previous`` both (lit-align before the change), ``trl-unfused`` TRL with ``adamw_torch``
  (the earlier matched arm).
- ``trl-defaults``: ``DPOTrainer`` as a user meets it (bf16 autocast, gradient checkpointing, fused AdamW,
  clipping at 1.0, linear schedule); only batch size, max length, steps and the data order are set.

The model: ``--size 16m`` (the default: 6 layers, hidden 384, 15.7M parameters) or ``125m`` (12 layers, hidden 768,
vocab 32000, 124.7M). Shared everywhere: fp32 weights, AdamW(lr, betas (0.9, 0.999), eps 1e-8, weight decay 0),
β = 0.1, dropout off.
Run::

    python -m tools.bench                       # the full benchmark (about 30 minutes on 2 cores)
    python -m tools.bench --quick               # a smoke test: tiny model, 2 steps, 1 thread, plain + lit-align + trl
    python -m tools.bench --arms plain-packed lit-align lit-align-previous trl trl-unfused --rounds 2
    python -m tools.bench --arms lit-align-dense --row-tokens 256 384 1024 --rounds 2   # rows' size, dense attention
    python -m tools.bench --size 125m --arms plain-packed lit-align trl --rounds 2 --steps 3 --pairs 64

TRL is an optional extra (``pip install -e ".[bench]"``); without it the TRL arms are skipped, saying so.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.common import peak_memory_mib

ROOT = Path(__file__).resolve().parents[1]
HH_FILE = ROOT / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
ARMS = ("plain", "plain-packed", "lit-align", "lit-align-padded", "trl", "trl-defaults", "lit-align-offline",
        "lit-align-offline-padded", "lit-align-grouped", "lit-align-grouped-padded", "plain-grouped",
        "plain-packed-grouped", "lit-align-unfused", "lit-align-per-tensor-guard", "lit-align-previous",
        "trl-unfused", "lit-align-bf16", "lit-align-bf16-master", "trl-bf16", "plain-packed-dense",
        "lit-align-dense")
ROWS_ARM = "lit-align-rows"
"""Prefix of the row-size arms ``--row-tokens`` adds: ``lit-align-rows384`` is ``lit-align-dense`` at
``pack_row_tokens=384`` (``lit-align-rows0``: every pair of a batch in one row)."""
BF16_PAIRS = {"lit-align-bf16": "lit-align", "lit-align-bf16-master": "lit-align", "trl-bf16": "trl",
              "trl-defaults": "trl"}
"""Each bf16 arm and the fp32 arm whose first steps it is compared with."""
METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected")
TRL_SETTINGS = ("bf16", "gradient_checkpointing", "optim", "max_grad_norm", "lr_scheduler_type", "learning_rate",
                "beta")
RECORDED_STEPS = 3
"""Steps whose loss and metrics each arm records (warm-up steps, outside the timed ones)."""


# ----------------------------------------------------------------------------------------------- setup (parent)


SIZES = {
    "16m": dict(vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                num_key_value_heads=2),
    "125m": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=4),
}
"""Llama-architecture configs: ``16m`` (15.7M parameters, the default) and ``125m`` (124.7M, GQA 12/4 heads)."""


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--size`` config (a tiny one with ``--quick``)."""
    if args.quick:
        return dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2)
    return SIZES[args.size]


def read_pairs(path: Path, limit: int | None = None) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) strings of the (first ``limit``) HH rows lit-align accepts."""
    from lit_align.data.chat import split_row
    from lit_align.data.layouts import BadRow

    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()][:limit]
    pairs = []
    for row in rows:
        try:
            pairs.append(split_row(row, "hh", chat_template=None))
        except BadRow:
            continue
    return pairs


def build_tokenizer(texts: list[str], vocab_size: int, target: Path) -> None:
    from lit_align.tasks.tokenizer import train_bpe_tokenizer  # here: a run sets its threads before torch loads

    train_bpe_tokenizer(texts, vocab_size).save_pretrained(target)


FAMILY_EXTRAS = {"qwen3": {"head_dim": 64}, "gemma3_text": {"head_dim": 64, "sliding_window": 512}}
"""Settings a family needs beside the bench's size (Gemma-3: 5 sliding layers of window 512, then a global one)."""


def build_model(config: dict[str, Any], seed: int, target: Path, family: str = "llama") -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    settings = {**config, **FAMILY_EXTRAS.get(family, {})}
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        family, pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=2048, **settings))
    model.save_pretrained(target)
    return sum(p.numel() for p in model.parameters())


def fitting_pairs(pairs: list[tuple[str, str, str]], tokenizer_dir: Path, args: argparse.Namespace) -> list[dict]:
    """Rows whose lit-align tokenisation fits untruncated, with their token ids (truncation mode ``drop``)."""
    from transformers import AutoTokenizer

    from lit_align.data.tokenize import OK, LengthSettings, PairTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    lengths = LengthSettings(args.max_length, args.max_prompt_length, "drop")
    pair_tokenizer = PairTokenizer(tokenizer, "explicit", lengths)
    columns = pair_tokenizer({"prompt": [p[0] for p in pairs], "chosen": [p[1] for p in pairs],
                              "rejected": [p[2] for p in pairs]})
    kept = []
    for i, (prompt, chosen, rejected) in enumerate(pairs):
        if columns["status"][i] == OK and not columns["notes"][i]:
            kept.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                         "example_key": columns["example_key"][i], "prompt_ids": columns["prompt_ids"][i],
                         "chosen_ids": columns["chosen_ids"][i], "rejected_ids": columns["rejected_ids"][i]})
    return kept


def lit_data_settings(args: argparse.Namespace, workdir: Path, grouped: bool) -> dict[str, Any]:
    """``PreferenceDataModule`` arguments of every lit-align arm (and of the order written for the others)."""
    settings = dict(path=str(workdir / "pairs.jsonl"), tokenizer=str(workdir / "tokenizer"), row_format="explicit",
                    max_length=args.max_length, max_prompt_length=args.max_prompt_length, truncation_mode="drop",
                    batch_size=args.batch_size, val_fraction=0.0, seed=args.seed)
    if grouped:
        settings["group_by_length"] = args.group_by_length
    return settings


def write_order(rows: list[dict], args: argparse.Namespace, workdir: Path, grouped: bool) -> Path:
    """The pairs in the order lit-align's data module takes them, as a jsonl file for TRL and the plain loop."""
    from lit_align.data import PreferenceDataModule

    data = PreferenceDataModule(**lit_data_settings(args, workdir, grouped))
    data.setup("fit")
    by_key = {row["example_key"]: row for row in rows}
    keys = data.train_set["example_key"]
    order = [by_key[keys[i]] for i in data.train_dataloader().sampler]
    target = workdir / f"order-{'grouped' if grouped else 'random'}.jsonl"
    target.write_text("".join(json.dumps(row) + "\n" for row in order), encoding="utf-8")
    return target


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    pairs = read_pairs(Path(args.data), 200 if args.quick else None)
    build_tokenizer([p + r for p, c, rj in pairs for r in (c, rj)], model_config(args)["vocab_size"],
                    workdir / "tokenizer")
    parameters = build_model(model_config(args), args.seed, workdir / "model", args.family)
    rows = fitting_pairs(pairs, workdir / "tokenizer", args)
    needed = (args.warmup + args.steps) * args.batch_size
    count = max(args.pairs, needed)
    if len(rows) < count:
        raise SystemExit(f"only {len(rows)} pairs fit max_length={args.max_length}; need {count}")
    fitting = len(rows)
    rows = random.Random(args.seed).sample(rows, count)
    explicit = [{k: row[k] for k in ("prompt", "chosen", "rejected")} for row in rows]
    (workdir / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in explicit), encoding="utf-8")
    write_order(rows, args, workdir, grouped=False)
    if any(arm.endswith("grouped") for arm in args.arms):
        write_order(rows, args, workdir, grouped=True)
    return {"parameters": parameters, "pairs": count, "fitting_pairs_of_all": (len(pairs), fitting),
            "setup_s": time.perf_counter() - start}


# ----------------------------------------------------------------------------------------------- the arms (child)


class StepLog:
    """What an arm records: per-step wall and CPU time (all threads of the process), non-pad and computed tokens,
    the attention scores computed (each row's length squared, as SDPA with a mask computes the masked ones too; each
    pair's length squared by pair), the first steps' loss and metrics, and a hash of the first batches (to show all
    arms train on the same ones)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.tokens: list[Any] = []
        self.padded: list[int] = []
        self.cells: list[int] = []
        self.first: list[dict[str, float]] = []
        self.hashes: list[str] = []
        self.last: tuple[float, float] | None = None

    def batch(self, input_ids, tokens, computed=None, spans=None) -> None:
        """Record a batch (no host sync: the token count stays a tensor until the end): its padded ``input_ids``
        (hashed for the first steps, to show every arm ran the same batches; ``None`` after them), the ``tokens``
        of its sequences, ``computed``, the model input actually run when it is not ``input_ids``, and the pairs'
        ``spans`` when attention runs by pair (each pair then computes its length squared)."""
        self.tokens.append(tokens)
        computed = input_ids if computed is None else computed
        self.padded.append(computed.numel())
        self.cells.append(computed.shape[0] * computed.shape[1] ** 2 if spans is None
                          else sum(length**2 for _, _, length in spans))
        if len(self.hashes) < RECORDED_STEPS:
            self.hashes.append(hashlib.blake2b(input_ids.cpu().numpy().tobytes(), digest_size=8).hexdigest())

    def tick(self) -> None:
        """A step ended."""
        now = time.perf_counter(), time.process_time()
        if self.last is not None:
            self.times.append(now[0] - self.last[0])
            self.cpu_times.append(now[1] - self.last[1])
        self.last = now

    def restart(self) -> None:
        """Start the next interval now (after bookkeeping that is not part of training)."""
        self.last = time.perf_counter(), time.process_time()

    def result(self, extra: dict[str, Any]) -> dict[str, Any]:
        return {"times": self.times, "cpu_times": self.cpu_times, "tokens": [int(t) for t in self.tokens],
                "padded": self.padded, "cells": self.cells, "first": self.first, "hashes": self.hashes,
                "peak_rss_mib": peak_memory_mib(), **extra}


def plain_adamw(params, spec: dict[str, Any]):
    """The plain loops' AdamW: torch's fused kernel (as lit-align's default), or torch's own pick (``unfused``)."""
    import torch

    fused = {"fused": True} if spec["adamw"] == "fused" else {}
    return torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0, **fused)


def run_plain(spec: dict[str, Any]) -> dict[str, Any]:
    """The floor: the DPO step written out by hand, nothing else, in the padded layout or (``plain-packed``) on
    lit-align's packed rows."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from lit_align.data.packing import CHOSEN, REJECTED, one_row, pack_pairs
    from lit_align.models.pair_attention import BY_PAIR, pair_rows, pair_spans

    device = torch.device(spec["device"])
    policy = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).to(device).train()
    reference = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32).to(device).eval()
    reference.requires_grad_(False)
    batch_size, beta, packed = spec["batch_size"], spec["beta"], spec["layout"] == "packed"
    by_pair = spec["attention"] == "by_pair" and packed
    if by_pair:
        policy.set_attn_implementation(BY_PAIR)
        reference.set_attn_implementation(BY_PAIR)
    optimizer = plain_adamw(policy.parameters(), spec)
    rows = [json.loads(line) for line in Path(spec["order"]).read_text(encoding="utf-8").splitlines()]

    def collate(pairs: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sequences = [(p["prompt_ids"], p[side]) for side in ("chosen_ids", "rejected_ids") for p in pairs]
        width = max(len(a) + len(b) for a, b in sequences)
        ids = torch.zeros(len(sequences), width, dtype=torch.long)
        attention = torch.zeros(len(sequences), width, dtype=torch.long)
        response = torch.zeros(len(sequences), width, dtype=torch.bool)
        for row, (prompt, answer) in enumerate(sequences):
            ids[row, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
            attention[row, : len(prompt) + len(answer)] = 1
            response[row, len(prompt) : len(prompt) + len(answer)] = True
        return ids.to(device), attention.to(device), response.to(device)

    def written_mask(pair: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
        """A token may see the earlier tokens of its pair, a rejected one not the chosen."""
        causal = torch.ones(pair.shape[1], pair.shape[1], dtype=torch.bool, device=device).tril()
        crossing = (part[:, :, None] == REJECTED) & (part[:, None, :] == CHOSEN)
        return ((pair[:, :, None] == pair[:, None, :]) & causal & ~crossing)[:, None]

    def pack(pairs: list[dict]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pairs' packed rows, with the rows' dense mask or (by pair) each pair's own mask and span."""
        layout = {name: value.to(device) for name, value in pack_pairs(pairs, 0, spec["row_tokens"]).items()}
        layout = one_row(layout) if by_pair else layout
        inputs = {"input_ids": layout["input_ids"], "position_ids": layout["position_ids"]}
        if by_pair:
            local = pair_rows(layout)
            inputs.update(attention_mask=written_mask(local["pair_index"], local["part"]),
                          pair_spans=pair_spans(layout))
        else:
            inputs["attention_mask"] = written_mask(layout["pair_index"], layout["part"])
        return inputs, layout["grid"], layout["response_ids"], layout["response_mask"]

    def sequence_logps(model, inputs, grid, ids, response) -> torch.Tensor:
        """Summed response log-probs; ``grid`` (packed rows) gathers each response's states from the rows."""
        hidden = model.model(**inputs, use_cache=False).last_hidden_state
        if grid is not None:
            hidden = hidden.flatten(0, 1)[grid]
        rows, positions = response[:, 1:].nonzero(as_tuple=True)
        logits = model.lm_head(hidden[rows, positions]).float()
        token_logps = logits.gather(-1, ids[rows, positions + 1, None]).squeeze(-1) - logits.logsumexp(-1)
        return torch.zeros(len(ids), device=ids.device).index_add(0, rows, token_logps)

    log = StepLog()
    log.restart()
    for step in range(spec["total_steps"]):
        pairs = rows[step * batch_size : (step + 1) * batch_size]
        if packed:
            inputs, grid, ids, response = pack(pairs)
            tokens = sum(2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs)
            log.batch(collate(pairs)[0] if step < RECORDED_STEPS else None, tokens, inputs["input_ids"],
                      inputs.get("pair_spans"))
        else:
            ids, attention, response = collate(pairs)
            inputs, grid = {"input_ids": ids, "attention_mask": attention}, None
            log.batch(ids, attention.sum())
        policy_logps = sequence_logps(policy, inputs, grid, ids, response)
        with torch.no_grad():
            ref_logps = sequence_logps(reference, inputs, grid, ids, response)
        (chosen, rejected), (ref_chosen, ref_rejected) = policy_logps.chunk(2), ref_logps.chunk(2)
        chosen_rewards, rejected_rewards = beta * (chosen - ref_chosen), beta * (rejected - ref_rejected)
        loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log.tick()
        if step < RECORDED_STEPS:
            values = (loss, chosen_rewards, rejected_rewards, chosen_rewards - rejected_rewards, chosen, rejected)
            log.first.append({name: v.detach().mean().item() for name, v in zip(METRICS, values, strict=True)})
            log.restart()
    return log.result({})


def run_lit(spec: dict[str, Any]) -> dict[str, Any]:
    """lit-align as a user runs it: module + data module + trainer."""
    from functools import partial

    import torch
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import ModelParallelStrategy

    import lit_align.models.layout
    from lit_align.callbacks import NonFiniteGuard
    from lit_align.data import PreferenceDataModule
    from lit_align.data.collator import sequence_tokens
    from lit_align.data.packing import CHOSEN, PROMPT, REJECTED
    from lit_align.models.layout import PACKED, attention_backend
    from lit_align.models.pair_attention import BY_PAIR, pair_spans
    from lit_align.models.policy import PolicySpec
    from lit_align.models.sharding import FSDPMixedPrecision
    from lit_align.module import AlignmentModule
    from lit_align.objectives import DPO
    from lit_align.reference import FrozenCopy, OfflineStore
    from lit_align.schedule import AdamW
    from lit_align.trainer import AlignmentTrainer

    log = StepLog()

    class PerTensorGuard(NonFiniteGuard):
        """The guard's gradient check before issue 27: ``isfinite(grad).all()`` of every gradient, stacked."""

        def suspect(self, grads):
            return torch.stack([torch.isfinite(grad).all().logical_not() for grad in grads]).any()

    class StepTimer(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            log.restart()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if 0 < batch_idx <= RECORDED_STEPS:  # the previous step's logged values (updated after its batch end)
                log.first.append(step_metrics(trainer))
                log.restart()
            view = pl_module.pair_view(batch)  # the layout the step runs in (the only one built, while fitting)
            computed = view[PACKED]["input_ids"] if PACKED in view else view["input_ids"]
            ids = padded_ids(batch) if len(log.hashes) < RECORDED_STEPS else None
            by_pair = PACKED in view and attention_backend(pl_module.policy.config) == BY_PAIR
            log.batch(ids, sequence_tokens(batch), computed, pair_spans(view[PACKED]) if by_pair else None)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            log.tick()

    def padded_ids(batch):
        """The batch's padded ``input_ids`` (chosen rows, then rejected), rebuilt from a packed-only batch."""
        if "input_ids" in batch:
            return batch["input_ids"]
        packed, pairs = batch["packed"], len(batch["example_key"])
        ids, pair, part = packed["input_ids"], packed["pair_index"], packed["part"]
        rows = [torch.cat([ids[(pair == i) & (part == PROMPT)], ids[(pair == i) & (part == side)]])
                for side in (CHOSEN, REJECTED) for i in range(pairs)]
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=0)

    def step_metrics(trainer) -> dict[str, float]:
        logged = trainer.callback_metrics
        return {name: logged[f"train/{name}_step"].item() for name in METRICS}

    if spec["attention"] == "dense":  # lit-align before attention by pair: SDPA over each row's whole length
        lit_align.models.layout.attend_by_pair = lambda model: False
    offline = spec["reference"] == "offline"
    reference = OfflineStore(spec["store"]) if offline else FrozenCopy()
    fused = spec["adamw"] == "fused"  # lit-align's default optimizer at the bench's lr, or torch's own pick
    optimizer = partial(AdamW, lr=spec["lr"]) if fused else partial(torch.optim.AdamW, lr=spec["lr"], weight_decay=0.0)
    master = spec["precision"] == "bf16-master"  # bf16 weights computed, fp32 master weights: FSDP2 on one process
    module = AlignmentModule(DPO(beta=spec["beta"]), PolicySpec(path=spec["model"]), reference=reference,
                             optimizer=optimizer, packing=spec["packing"],
                             mixed_precision=FSDPMixedPrecision() if master else None)
    data = PreferenceDataModule(**spec["data"])
    accelerator = "cpu" if spec["device"] == "cpu" else "gpu"
    guard = [PerTensorGuard()] if spec["guard"] == "per-tensor" else []  # else the trainer's own NonFiniteGuard
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1) if master else "auto"
    trainer = AlignmentTrainer(max_steps=spec["total_steps"], accelerator=accelerator, devices=1, strategy=strategy,
                               precision="bf16-mixed" if master else spec["precision"], enable_checkpointing=False,
                               num_sanity_val_steps=0, limit_val_batches=0,
                               default_root_dir=spec["root"], callbacks=[*guard, StepTimer()])
    if spec.get("precompute"):
        start = time.perf_counter()
        trainer.precompute(module, data)
        return {"precompute_s": time.perf_counter() - start, "pairs": len(data.train_set)}
    trainer.fit(module, data)
    return log.result({})


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """TRL's DPOTrainer, at matched settings or with its defaults."""
    from datasets import load_dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    log = StepLog()

    class RecordingDPOTrainer(DPOTrainer):
        """Records each batch and, for the first steps, the loss and TRL's own metrics (instrumentation only)."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            log.batch(inputs["input_ids"], inputs["attention_mask"].sum())
            loss = super().training_step(model, inputs, num_items_in_batch)
            self._recorded_loss = loss
            return loss

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            log.restart()

        def on_step_end(self, args, state, control, **kwargs):
            log.tick()
            if len(log.first) < RECORDED_STEPS:
                metrics = {name: trainer._metrics["train"][name][-1] for name in METRICS[1:]}
                log.first.append({"loss": trainer._recorded_loss.item(), **metrics})
                log.restart()

    common = dict(output_dir=spec["root"], max_steps=spec["total_steps"],
                  per_device_train_batch_size=spec["batch_size"], max_length=spec["max_length"],
                  train_sampling_strategy="sequential", save_strategy="no", report_to="none",
                  use_cpu=spec["device"] == "cpu", dataloader_num_workers=0, seed=spec["seed"])
    if spec["defaults"]:
        config = DPOConfig(**common)
    else:
        optim = "adamw_torch_fused" if spec["adamw"] == "fused" else "adamw_torch"
        bf16 = spec["precision"] == "bf16-mixed"  # TRL's bf16: autocast over fp32 weights, as Lightning's
        config = DPOConfig(**common, beta=spec["beta"], learning_rate=spec["lr"], lr_scheduler_type="constant",
                           optim=optim, weight_decay=0.0, max_grad_norm=0.0, bf16=bf16, fp16=False,
                           gradient_checkpointing=False)
    dataset = load_dataset("json", data_files=spec["order"], split="train").select_columns(
        ["prompt", "chosen", "rejected"])
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    trainer = RecordingDPOTrainer(model=spec["model"], args=config, train_dataset=dataset,
                                  processing_class=tokenizer, callbacks=[StepTimer()])
    settings = {name: str(getattr(config, name)) for name in TRL_SETTINGS}
    trainer.train()
    return log.result({"settings": settings})


def child(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec["threads"]:
        import torch

        torch.set_num_threads(spec["threads"])
    runner = {"plain": run_plain, "lit": run_lit, "trl": run_trl}[spec["kind"]]
    Path(spec["result"]).write_text(json.dumps(runner(spec)))


# ----------------------------------------------------------------------------------------------- running (parent)


def arm_spec(arm: str, args: argparse.Namespace, workdir: Path, round_index: int) -> dict[str, Any]:
    grouped = "grouped" in arm
    row_tokens = default_row_tokens()
    data = lit_data_settings(args, workdir, grouped)
    if arm.startswith(ROWS_ARM):
        row_tokens = data["pack_row_tokens"] = int(arm.removeprefix(ROWS_ARM)) or None
    order = workdir / f"order-{'grouped' if grouped else 'random'}.jsonl"
    name = f"{arm}-{round_index}"
    spec = dict(arm=arm, kind=arm.split("-")[0], device=args.device,
                threads=args.threads, model=str(workdir / "model"), tokenizer=str(workdir / "tokenizer"),
                order=str(order), batch_size=args.batch_size, max_length=args.max_length, lr=args.lr, beta=args.beta,
                seed=args.seed, total_steps=args.warmup + args.steps, root=str(workdir / "runs" / name),
                result=str(workdir / "results" / f"{name}.json"), log=str(workdir / "logs" / f"{name}.log"),
                reference="offline" if "offline" in arm else "online", store=str(workdir / "store"),
                defaults=arm == "trl-defaults", packing=not arm.endswith("padded"),
                layout="packed" if arm.startswith("plain-packed") else "padded", row_tokens=row_tokens,
                adamw="unfused" if arm.endswith(("-unfused", "-previous")) else "fused",
                guard="per-tensor" if arm.endswith(("-per-tensor-guard", "-previous")) else "norm",
                precision=arm_precision(arm), data=data,
                attention="dense" if arm.endswith("-dense") or arm.startswith(ROWS_ARM) else "by_pair")
    return spec


def arm_precision(arm: str) -> str:
    """``bf16-mixed`` (autocast over fp32 weights) for the ``-bf16`` arms; ``bf16-master`` (FSDP2 on one process,
    bf16 weights gathered and computed, fp32 master weights and optimizer states) for ``-bf16-master``; else fp32."""
    if arm.endswith("-bf16-master"):
        return "bf16-master"
    return "bf16-mixed" if arm.endswith("-bf16") else "32-true"


def default_row_tokens() -> int | None:
    """``PreferenceDataModule``'s default ``pack_row_tokens`` (what a user's packed rows hold)."""
    import inspect

    from lit_align.data import PreferenceDataModule

    return inspect.signature(PreferenceDataModule).parameters["pack_row_tokens"].default


def launch(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one arm in a fresh process; its output goes to the spec's log file."""
    spec_path = workdir / "specs" / f"{Path(spec['result']).stem}.json"
    for folder in ("specs", "results", "logs"):
        (workdir / folder).mkdir(exist_ok=True)
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if spec["threads"]:  # else Lightning's strategies for several processes set torch's threads to the cores
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    with open(spec["log"], "w") as output:
        done = subprocess.run([sys.executable, "-m", "tools.bench", "--child", str(spec_path)], stdout=output,
                              stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if done.returncode != 0:
        tail = Path(spec["log"]).read_text().splitlines()[-25:]
        raise RuntimeError(f"arm {spec['arm']} failed (log {spec['log']}):\n" + "\n".join(tail))
    return json.loads(Path(spec["result"]).read_text())


def summarise(runs: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """Medians: seconds per step (wall and CPU) over all timed steps of all rounds; tokens/s (non-pad tokens over
    wall seconds) and tokens per CPU-second per round, median over rounds; computed positions per token; the peak
    RSS (the largest over rounds); attention scores computed per token (rows times their length squared)."""
    times, cpu_times, rates, cpu_rates, positions, cells = [], [], [], [], [], []
    for run in runs:
        timed = slice(warmup, None)
        tokens, padded = run["tokens"][timed], run["padded"][timed]
        times += run["times"][timed]
        cpu_times += run["cpu_times"][timed]
        rates.append(sum(tokens) / sum(run["times"][timed]))
        cpu_rates.append(sum(tokens) / sum(run["cpu_times"][timed]))
        positions.append(sum(padded) / sum(tokens))
        cells.append(sum(run["cells"][timed]) / sum(tokens))
    return {"s_per_step": statistics.median(times), "cpu_s_per_step": statistics.median(cpu_times),
            "tokens_per_s": statistics.median(rates), "tokens_per_cpu_s": statistics.median(cpu_rates),
            "positions_per_token": statistics.median(positions), "cells_per_token": statistics.median(cells),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "rounds": len(runs), "steps": len(times), "first": runs[0]["first"], "hashes": runs[0]["hashes"],
            "settings": runs[0].get("settings")}


def print_report(summary: dict[str, dict[str, Any]], info: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nMedians over {args.steps} timed steps x {args.rounds} rounds after {args.warmup} warm-up steps. "
          "tokens/s: non-pad tokens (chosen + rejected) per wall second; CPU s/step and tokens/CPU-s: process CPU "
          "time (all threads), less sensitive to other load on the machine. Ratios: tokens/s (tokens/CPU-s).")
    header = ("| arm | tokens/s | s/step | CPU s/step | tokens/CPU-s | positions/token | attention/token | "
              "peak RSS MiB | vs trl | vs trl-defaults | vs lit-align-padded | vs its floor |")
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    for arm, s in summary.items():
        floor = floor_of(arm, summary)
        print(f"| {arm} | {s['tokens_per_s']:.0f} | {s['s_per_step']:.2f} | {s['cpu_s_per_step']:.3f} | "
              f"{s['tokens_per_cpu_s']:.0f} | {s['positions_per_token']:.2f} | {s['cells_per_token']:.0f} | "
              f"{s['peak_rss_mib']:.0f} | {ratio(s, summary.get('trl'))} | {ratio(s, summary.get('trl-defaults'))} | "
              f"{ratio(s, summary.get('lit-align-padded'))} | "
              f"{ratio(s, summary.get(floor)) + f' ({floor})' if floor in summary else '-'} |")
    print_rows(summary)
    print_overheads(summary)
    if "lit-align-offline" in summary and "lit-align" in summary:
        offline, online = summary["lit-align-offline"], summary["lit-align"]
        print(f"\noffline store step time / online step time: {offline['s_per_step'] / online['s_per_step']:.2f} "
              f"(CPU time: {offline['cpu_s_per_step'] / online['cpu_s_per_step']:.2f}; floor ≈ 0.75)")
    if "precompute_s" in info:
        print(f"offline store precompute (one-off): {info['precompute_s']:.1f} s for {info['pairs']} pairs "
              f"({info['pairs'] / info['precompute_s']:.1f} pairs/s)")
    print_agreement(summary)
    for arm in ("trl", "trl-bf16", "trl-defaults"):
        if arm in summary:
            print(f"{arm} settings: {summary[arm]['settings']}")


def floor_of(arm: str, summary: dict[str, dict[str, Any]]) -> str:
    """The plain loop an arm is measured against: ``plain-grouped`` for the grouped arms, ``plain-packed`` for the
    other packed lit-align arms (when it ran), ``plain`` for the rest."""
    packed_lit = arm.startswith("lit-align") and not arm.endswith("padded")
    if arm == "lit-align-dense":
        return "plain-packed-dense"
    if "grouped" in arm:
        return "plain-packed-grouped" if packed_lit and "plain-packed-grouped" in summary else "plain-grouped"
    return "plain-packed" if packed_lit and "plain-packed" in summary else "plain"


def print_rows(summary: dict[str, dict[str, Any]]) -> None:
    """The row-size arms (``--row-tokens``) beside ``lit-align-dense`` (the default row size): what a packed row's
    length costs where attention runs over whole rows."""
    default = default_row_tokens()
    arms = {int(arm.removeprefix(ROWS_ARM)): arm for arm in summary if arm.startswith(ROWS_ARM)}
    if not arms:
        return
    if "lit-align-dense" in summary and default not in arms:
        arms[default] = "lit-align-dense"
    base = summary.get("lit-align-dense")
    print(f"\nPacked rows (pack_row_tokens; the data module's default {default}):")
    print("| pack_row_tokens | arm | tokens/s | CPU s/step | tokens/CPU-s | positions/token | attention/token | "
          f"peak RSS MiB | vs lit-align-dense ({default}) |\n|" + "---|" * 9)
    for size in sorted(arms):
        s = summary[arms[size]]
        print(f"| {size} | {arms[size]} | {s['tokens_per_s']:.0f} | {s['cpu_s_per_step']:.3f} | "
              f"{s['tokens_per_cpu_s']:.0f} | {s['positions_per_token']:.3f} | {s['cells_per_token']:.0f} | "
              f"{s['peak_rss_mib']:.0f} | {ratio(s, base)} |")


def print_overheads(summary: dict[str, dict[str, Any]]) -> None:
    """Each change to the step's own overheads: the arm with it over the arm without it, same run."""
    changes = [("fused AdamW", "lit-align", "lit-align-unfused"),
               ("guard on the total gradient norm", "lit-align", "lit-align-per-tensor-guard"),
               ("both (lit-align now / before)", "lit-align", "lit-align-previous"),
               ("TRL adamw_torch_fused / adamw_torch", "trl", "trl-unfused")]
    shown = [(what, new, old) for what, new, old in changes if new in summary and old in summary]
    if shown:
        print("\nThe step's own overheads, tokens/s (tokens/CPU-s) of the arm with the change over the arm without:")
    for what, new, old in shown:
        print(f"- {what}: {new} / {old} = {ratio(summary[new], summary[old])}")


def print_agreement(summary: dict[str, dict[str, Any]]) -> None:
    """The first steps' loss and metrics of every arm, and lit-align's largest difference from TRL and plain
    (absolute, relative for values above 1 in magnitude: summed log-probs of ~100 tokens carry fp32 rounding)."""
    print(f"\nFirst {RECORDED_STEPS} steps (same weights, same batches): loss and metrics per arm")
    same = {arm: s["hashes"] for arm, s in summary.items() if "grouped" not in arm}
    print(f"batches identical across {sorted(same)}: {len({tuple(h) for h in same.values()}) == 1}")
    print("| arm | step | " + " | ".join(METRICS) + " |\n|" + "---|" * (len(METRICS) + 2))
    for arm, s in summary.items():
        for step, values in enumerate(s["first"]):
            print(f"| {arm} | {step} | " + " | ".join(f"{values[m]:.6f}" for m in METRICS) + " |")
    reference = summary.get("lit-align")
    for other in ("trl", "plain", "plain-packed"):
        if reference and other in summary:
            worst = largest_difference(reference["first"], summary[other]["first"], METRICS)
            verdict = "agree" if worst <= 1e-4 else "DIFFER"
            print(f"lit-align vs {other}: largest difference {worst:.1e} ({verdict} to 1e-4)")
    for arm, fp32 in BF16_PAIRS.items():
        if arm in summary and fp32 in summary:
            ours, theirs = summary[arm]["first"], summary[fp32]["first"]
            losses, margins = (", ".join(f"{a[name] - b[name]:+.1e}" for a, b in zip(ours, theirs, strict=True))
                               for name in ("loss", "rewards/margins"))
            logps = largest_difference(ours, theirs, ("logps/chosen", "logps/rejected"))
            print(f"{arm} vs {fp32} (fp32), first {len(ours)} steps: loss differences {losses}; reward margins "
                  f"{margins}; summed log-probs {logps:.1e} relative at most"
                  + (" (trl-defaults also trains at lr 1e-6, with clipping)" if arm == "trl-defaults" else ""))


def largest_difference(first: list[dict[str, float]], second: list[dict[str, float]], metrics) -> float:
    """The largest difference of ``metrics`` over the recorded steps: absolute, relative for values above 1 in
    magnitude (summed log-probs of ~100 tokens carry fp32 rounding)."""
    return max(abs(a[m] - b[m]) / max(1.0, abs(a[m])) for a, b in zip(first, second, strict=True) for m in metrics)


def ratio(arm: dict[str, Any], base: dict[str, Any] | None) -> str:
    if base is None:
        return "-"
    return (f"{arm['tokens_per_s'] / base['tokens_per_s']:.2f}x "
            f"({arm['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(HH_FILE), help="HH-RLHF style jsonl(.gz) (default: data/)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--family", default="llama", help="the model family, at the bench's size (llama, qwen3, "
                        "gemma3_text, or another transformers model_type)")
    parser.add_argument("--size", default="16m", choices=sorted(SIZES), help="the model's size (default 16m)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help=f"untimed steps at the start of each run "
                        f"(>= {RECORDED_STEPS}, whose loss and metrics are recorded)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--pairs", type=int, default=256, help="pairs in the data set (and in the offline store)")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-prompt-length", type=int, default=384)
    parser.add_argument("--group-by-length", type=int, default=16, help="window of the grouped arms, in batches")
    parser.add_argument("--row-tokens", type=int, nargs="+", default=[], help="add lit-align arms at these "
                        f"pack_row_tokens ({ROWS_ARM}N: the packed rows' size, measured side by side)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads per arm (0: torch's default)")
    parser.add_argument("--workdir", default=None, help="keep models, data, logs and results here")
    parser.add_argument("--out", default=None, help="write the summary as JSON here")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny model, 2 steps, one round")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    if args.quick:
        args.rounds, args.warmup, args.steps, args.pairs = 1, RECORDED_STEPS, 2, 16
        args.max_length, args.max_prompt_length = 256, 192
        args.threads = args.threads or 1  # tiny steps: one thread avoids stalls when other jobs share the cores
        if args.arms == list(ARMS):
            args.arms = ["plain", "plain-packed", "lit-align", "lit-align-padded", "trl"]
    args.arms += [f"{ROWS_ARM}{size}" for size in args.row_tokens if f"{ROWS_ARM}{size}" not in args.arms]
    if args.warmup < RECORDED_STEPS:
        parser.error(f"--warmup must be at least {RECORDED_STEPS}")
    if importlib.util.find_spec("trl") is None:
        skipped = [arm for arm in args.arms if arm.startswith("trl")]
        if skipped:
            print(f"SKIPPED {skipped}: trl is not installed (pip install -e '.[bench]')", flush=True)
        args.arms = [arm for arm in args.arms if not arm.startswith("trl")]
    with tempfile.TemporaryDirectory(prefix="lit-align-bench-") as scratch:
        workdir = Path(args.workdir or scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        run(args, workdir)


def run(args: argparse.Namespace, workdir: Path) -> None:
    info = prepare(args, workdir)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores ({describe_cpu()}); load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"model: {args.family} {model_config(args)}, {info['parameters'] / 1e6:.1f}M parameters, fp32, "
          f"on {args.device}")
    print(f"data: {info['pairs']} HH-RLHF pairs from {args.data} ({info['fitting_pairs_of_all'][1]} of "
          f"{info['fitting_pairs_of_all'][0]} fit max_length {args.max_length} / prompt {args.max_prompt_length}); "
          f"batch {args.batch_size} pairs; setup {info['setup_s']:.0f} s", flush=True)
    if "lit-align-offline" in args.arms:
        result = launch({**arm_spec("lit-align-offline", args, workdir, 0), "precompute": True, "arm": "precompute",
                         "result": str(workdir / "results" / "precompute.json"),
                         "log": str(workdir / "logs" / "precompute.log")}, workdir)
        info.update(result)
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in args.arms}
    for round_index in range(args.rounds):
        shift = round_index % len(args.arms)
        for arm in args.arms[shift:] + args.arms[:shift]:
            result = launch(arm_spec(arm, args, workdir, round_index), workdir)
            runs[arm].append(result)
            rate = sum(result["tokens"][args.warmup :]) / sum(result["times"][args.warmup :])
            print(f"round {round_index} {arm}: {rate:.0f} tokens/s, load {os.getloadavg()[0]:.2f}", flush=True)
    summary = {arm: summarise(results, args.warmup) for arm, results in runs.items()}
    print_report(summary, info, args)
    if args.out:
        Path(args.out).write_text(json.dumps({"info": info, "args": vars(args), "summary": summary}, indent=1))


def describe_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
