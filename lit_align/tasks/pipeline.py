"""The controlled-generation task, built in four cached stages under one work directory.

In the spirit of the IMDb experiment of the DPO and f-DPO papers, with a programmatic oracle in place of the
sentiment classifier:

1. ``corpus``: synthetic reviews (:mod:`corpus`) and three disjoint sets of fresh prompts (train, val, held out).
2. ``tokenizer``: a word-level tokenizer trained on the corpus (:mod:`tokenizer`).
3. ``sft``: a tiny Llama fine-tuned on the reviews, the reference model (:mod:`sft`).
4. ``pairs``: continuations sampled from it for the train and val prompts, labelled best vs worst by the
   oracle (:mod:`pairs`).

A rerun with the same settings skips every stage; changing a setting rebuilds its stage and those downstream
(:mod:`stages`). The layout of the work directory is fixed, so paths are known before anything is built.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jsonargparse.typing import PositiveFloat, PositiveInt
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoTokenizer, LlamaForCausalLM

from lit_align.eval.generation import sample_continuations
from lit_align.jsonl import read_jsonl, write_jsonl
from lit_align.tasks.corpus import make_review, unique_prompts
from lit_align.tasks.oracle import SentimentOracle
from lit_align.tasks.pairs import label_pairs
from lit_align.tasks.sft import SFTSettings, TinyLlamaSettings, train_sft
from lit_align.tasks.stages import StageResult, run_stage
from lit_align.tasks.tokenizer import train_tokenizer

TASK_VERSION = 1
"""Bumped whenever the grammar, oracle or stage code changes what a stage produces."""


@dataclass(frozen=True)
class ControlledTaskSettings:
    """Everything the task's artifacts depend on."""

    seed: int = 0
    """Seed of the corpus, the prompts, the SFT model's weights and batch order, and the pair samples."""
    n_reviews: PositiveInt = 20000
    """Reviews in the SFT corpus."""
    n_train_prompts: PositiveInt = 2000
    """Prompts sampled for training pairs (ties give no pair)."""
    n_val_prompts: PositiveInt = 200
    """Prompts sampled for validation pairs."""
    n_heldout_prompts: PositiveInt = 256
    """Prompts kept for evaluating samples at the end."""
    model: TinyLlamaSettings = field(default_factory=TinyLlamaSettings)
    sft: SFTSettings = field(default_factory=SFTSettings)
    samples_per_prompt: int = 2
    """Continuations sampled per prompt; the best and the worst make the pair."""
    max_new_tokens: PositiveInt = 48
    """Longest sampled continuation, in tokens."""
    sampling_temperature: PositiveFloat = 1.0
    sampling_batch_size: PositiveInt = 256
    """Prompt-sample rows per ``generate`` call (it also decides the per-batch seeds)."""

    def __post_init__(self) -> None:
        for name in (
            "n_reviews",
            "n_train_prompts",
            "n_val_prompts",
            "n_heldout_prompts",
            "max_new_tokens",
            "sampling_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt must be >= 2, got samples_per_prompt={self.samples_per_prompt}")
        if self.n_reviews < self.sft.batch_size:
            raise ValueError(
                f"n_reviews={self.n_reviews} is less than one SFT batch (sft.batch_size={self.sft.batch_size})"
            )
        if not self.sampling_temperature > 0:
            raise ValueError(f"sampling_temperature must be > 0, got {self.sampling_temperature}")


@dataclass(frozen=True)
class TaskArtifacts:
    """Where the task's files lie under ``workdir`` (fixed, so known before they are built)."""

    workdir: Path
    built: tuple[str, ...] = ()
    """The stages that the call which returned this object (re)built; empty when all were cached."""

    @property
    def corpus_dir(self) -> Path:
        return self.workdir / "corpus"

    @property
    def tokenizer_dir(self) -> Path:
        return self.workdir / "tokenizer"

    @property
    def sft_dir(self) -> Path:
        """The SFT model (the reference and the initial policy), with the tokenizer saved alongside."""
        return self.workdir / "sft"

    @property
    def train_pairs_path(self) -> Path:
        return self.workdir / "pairs" / "train.jsonl"

    @property
    def val_pairs_path(self) -> Path:
        return self.workdir / "pairs" / "val.jsonl"

    @property
    def pair_stats_path(self) -> Path:
        """``stage.json`` of the pairs stage: tie counts and reward statistics of the SFT samples."""
        return self.workdir / "pairs" / "stage.json"

    @property
    def heldout_prompts_path(self) -> Path:
        """JSON lines ``{"prompt": ...}``, disjoint from the corpus and from the pairs' prompts."""
        return self.corpus_dir / "heldout_prompts.jsonl"


def build_controlled_task(
    workdir: str | Path, settings: ControlledTaskSettings | None = None, progress: bool = True
) -> TaskArtifacts:
    """Build (or reuse) the task's corpus, tokenizer, SFT model and preference pairs under ``workdir``.

    Args:
        workdir: the work directory; see :class:`TaskArtifacts` for its layout.
        settings: the task's settings; the defaults are the quickstart's.
        progress: show progress bars for SFT and sampling.
    """
    settings = settings or ControlledTaskSettings()
    workdir = Path(workdir)
    common = {"version": TASK_VERSION, "seed": settings.seed}
    corpus = run_stage(
        workdir,
        "corpus",
        {**common, **_pick(settings, "n_reviews", "n_train_prompts", "n_val_prompts", "n_heldout_prompts")},
        lambda out: _build_corpus(out, settings),
    )
    tokenizer = run_stage(workdir, "tokenizer", common, lambda out: _build_tokenizer(out, corpus), [corpus])
    sft = run_stage(
        workdir,
        "sft",
        {**common, "model": dataclasses.asdict(settings.model), "sft": dataclasses.asdict(settings.sft)},
        lambda out: _build_sft(out, settings, corpus, tokenizer, progress),
        [corpus, tokenizer],
    )
    pairs = run_stage(
        workdir,
        "pairs",
        {
            **common,
            **_pick(settings, "samples_per_prompt", "max_new_tokens", "sampling_temperature", "sampling_batch_size"),
        },
        lambda out: _build_pairs(out, settings, corpus, sft, progress),
        [corpus, sft],
    )
    built = tuple(stage.name for stage in (corpus, tokenizer, sft, pairs) if stage.ran)
    return TaskArtifacts(workdir, built)


def _pick(settings: ControlledTaskSettings, *names: str) -> dict:
    return {name: getattr(settings, name) for name in names}


def _build_corpus(out: Path, settings: ControlledTaskSettings) -> dict:
    rng = random.Random(settings.seed)
    reviews = [make_review(rng) for _ in range(settings.n_reviews)]
    write_jsonl([{"prompt": r.prompt, "continuation": r.continuation} for r in reviews], out / "reviews.jsonl")
    sizes = {"train": settings.n_train_prompts, "val": settings.n_val_prompts, "heldout": settings.n_heldout_prompts}
    prompts = unique_prompts(sum(sizes.values()), rng, exclude={r.prompt for r in reviews})
    start = 0
    for split, size in sizes.items():
        write_jsonl([{"prompt": p} for p in prompts[start : start + size]], out / f"{split}_prompts.jsonl")
        start += size
    return {"n_reviews": len(reviews), "n_distinct_review_prompts": len({r.prompt for r in reviews})}


def _read_prompts(corpus: StageResult, split: str) -> list[str]:
    return [row["prompt"] for row in read_jsonl(corpus.path / f"{split}_prompts.jsonl")]


def _build_tokenizer(out: Path, corpus: StageResult) -> dict:
    texts = [row["prompt"] + row["continuation"] for row in read_jsonl(corpus.path / "reviews.jsonl")]
    texts += [p for split in ("train", "val", "heldout") for p in _read_prompts(corpus, split)]
    tokenizer = train_tokenizer(texts)
    tokenizer.save_pretrained(out)
    return {"vocab_size": len(tokenizer)}


def _build_sft(
    out: Path, settings: ControlledTaskSettings, corpus: StageResult, tokenizer: StageResult, progress: bool
) -> dict:
    texts = [row["prompt"] + row["continuation"] for row in read_jsonl(corpus.path / "reviews.jsonl")]
    loss = train_sft(
        texts,
        AutoTokenizer.from_pretrained(tokenizer.path),
        out,
        settings.model,
        settings.sft,
        settings.seed,
        progress,
    )
    return {"final_loss": loss}


def _build_pairs(
    out: Path, settings: ControlledTaskSettings, corpus: StageResult, sft: StageResult, progress: bool
) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(sft.path)
    model = LlamaForCausalLM.from_pretrained(sft.path).to("cuda" if torch.cuda.is_available() else "cpu")
    oracle = SentimentOracle()
    summary = {}
    for offset, split in enumerate(("train", "val")):
        prompts = _read_prompts(corpus, split)
        samples = sample_continuations(
            model,
            tokenizer,
            prompts,
            num_samples=settings.samples_per_prompt,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.sampling_temperature,
            batch_size=settings.sampling_batch_size,
            seed=settings.seed + 1_000_003 * offset,
            progress=progress,
        )
        rows, stats = label_pairs(prompts, samples, oracle)
        write_jsonl(rows, out / f"{split}.jsonl")
        summary[split] = {**dataclasses.asdict(stats), "tie_fraction": stats.tie_fraction}
        rank_zero_info(
            f"{split} pairs: {stats.n_pairs} from {stats.n_prompts} prompts ({stats.n_ties} ties); oracle reward "
            f"of SFT samples {stats.sample_reward_mean:.3f} ± {stats.sample_reward_std:.3f}"
        )
    return summary
