"""Reward-vs-KL frontier, diversity and calibration of the alignment objectives on the controlled task.

    python tools/frontier.py                     # default size: 9 objectives × 3 β + the HH-RLHF check -> docs/
    python tools/frontier.py --quick             # minutes: 3 objectives × 2 β on a small task -> runs/frontier_quick
    python tools/frontier.py --config my.yaml    # any setting from YAML; --print_config lists them all

Stages, each cached under ``--workdir``, so a rerun only does what changed:

1. the controlled task (corpus, tokenizer, SFT reference, oracle-labelled pairs), built once, shared by all runs;
2. the sparse autoencoder FPO reads (``tools/train_sae.py`` on the SFT model), when FPO is swept;
3. one alignment run per objective × β: a real ``AlignmentModule`` + ``ControlledTaskDataModule`` fit with the
   :class:`~lit_align.eval.SamplingEvaluation` callback (KL both ways, reward, win rate, entropy, distinct-n and
   held-out calibration every ``eval_every_n_steps``), then the reward margin and sequential KL of every held-out
   pair. Each run is a fresh process (``--jobs`` at once, ``--threads`` torch threads each) and writes
   ``runs/<objective>_b<β>_<key>/results.json`` (and its TensorBoard logs) there; ``key`` hashes everything the
   run depends on, and a run whose results exist is skipped;
4. the HH-RLHF sanity check: a BPE tokenizer and a small Llama warmed up by SFT on the chosen transcripts of
   the training split, a short DPO run, held-out reward accuracy and ECE;

then checks the papers' claims (:mod:`lit_align.eval.claims`), draws ``frontier.png``, ``diversity.png`` and
``calibration.png`` and writes ``frontier.md`` to ``--out_dir``.

One torch thread per run is deliberate: on a shared 2-core machine a 2-thread run of these tiny models can be
25 times slower than a 1-thread run (OpenMP threads spin-waiting for a core), while two 1-thread runs side by
side use both cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import multiprocessing
import os
import random
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from jsonargparse.typing import OpenUnitInterval, PositiveFloat, PositiveInt
from lightning.pytorch.loggers import TensorBoardLogger
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lit_align.data import PreferenceDataModule
from lit_align.eval import SamplingEvaluation, pair_statistics
from lit_align.eval.claims import (
    RunSummary,
    Verdict,
    calibration,
    check_diversity_order,
    check_ece_changes,
    check_kl_balance,
    check_reward_at_equal_kl,
)
from lit_align.eval.plots import plot_calibration, plot_diversity, plot_frontier
from lit_align.module import AlignmentModule
from lit_align.objectives import DPO, FDPO, FPO, TDPO, Objective
from lit_align.policy import PolicySpec
from lit_align.tasks import (
    ControlledTaskDataModule,
    ControlledTaskSettings,
    SentimentOracle,
    SFTSettings,
    TinyLlamaSettings,
)
from lit_align.tasks.pipeline import TaskArtifacts, build_controlled_task
from lit_align.tasks.sft import train_sft
from lit_align.tasks.stages import read_marker, run_stage
from lit_align.trainer import AlignmentTrainer

log = logging.getLogger("frontier")
REPO = Path(__file__).resolve().parents[1]
RESULTS_VERSION = 3
"""Bumped whenever a run's code changes what its results hold (invalidates every cached run)."""

ObjectiveName = Literal["dpo", "forward_kl", "js", "alpha_0.3", "alpha_0.5", "alpha_0.7", "tdpo1", "tdpo2", "fpo"]
LABELS: dict[str, str] = {
    "dpo": "DPO (reverse KL)",
    "forward_kl": "f-DPO forward KL",
    "js": "f-DPO JS",
    "alpha_0.3": "f-DPO α=0.3",
    "alpha_0.5": "f-DPO α=0.5",
    "alpha_0.7": "f-DPO α=0.7",
    "tdpo1": "TDPO1",
    "tdpo2": "TDPO2 (α=0.5)",
    "fpo": "FPO",
}


def make_objective(name: str, beta: float, sae_dir: str | None) -> Objective:
    """The objective ``name`` at strength ``beta`` (FPO reads the SAE in ``sae_dir``)."""
    if name == "dpo":
        return DPO(beta=beta)
    if name in ("forward_kl", "js"):
        return FDPO(divergence=name, beta=beta)
    if name.startswith("alpha_"):
        return FDPO(divergence="alpha", beta=beta, alpha=float(name.removeprefix("alpha_")))
    if name in ("tdpo1", "tdpo2"):
        return TDPO(variant=int(name[-1]), beta=beta, alpha=0.5)
    if name == "fpo":
        return FPO(sae_path=sae_dir, layer=0, beta=beta)
    raise ValueError(f"unknown objective {name!r}; choose one of {list(LABELS)}")


# ---------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class RunSettings:
    """Training and evaluation of each alignment run on the controlled task."""

    max_epochs: PositiveInt = 2
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 5e-4
    """AdamW learning rate (the quickstart's)."""
    eval_every_n_steps: PositiveInt = 61
    """Optimizer steps between evaluations (each one is a point along the run's frontier line); 61 is one epoch
    of the default task's pairs."""
    num_prompts: PositiveInt = 512
    """Held-out prompts sampled at each evaluation."""
    samples_per_prompt: PositiveInt = 2
    seed: int = 0


@dataclass(frozen=True)
class SAESettings:
    """The sparse autoencoder FPO reads, trained by ``tools/train_sae.py`` on the SFT model (as configs/fpo.yaml)."""

    layer: int = 0
    d_sae: PositiveInt = 512
    k: PositiveInt = 16
    max_texts: PositiveInt = 2000
    max_epochs: PositiveInt = 10


@dataclass(frozen=True)
class HHSettings:
    """The HH-RLHF sanity check: a small Llama, an SFT warm-up on chosen transcripts, then a short DPO run."""

    enabled: bool = True
    path: str = str(REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz")
    max_rows: PositiveInt | None = None
    """Use only the first rows of the file (all when unset)."""
    val_fraction: OpenUnitInterval = 0.1
    vocab_size: PositiveInt = 2048
    model: TinyLlamaSettings = field(
        default_factory=lambda: TinyLlamaSettings(
            hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, tie_word_embeddings=True,
        )
    )
    sft: SFTSettings = field(
        default_factory=lambda: SFTSettings(max_steps=200, batch_size=16, learning_rate=2e-3, warmup_steps=20)
    )
    max_length: PositiveInt = 192
    max_prompt_length: PositiveInt = 128
    beta: PositiveFloat = 0.1
    lr: PositiveFloat = 2e-4
    batch_size: PositiveInt = 16
    max_epochs: PositiveInt = 1
    seed: int = 0


QUICK = {
    "workdir": ".cache/frontier_quick",
    "out_dir": "runs/frontier_quick",
    "objectives": ["dpo", "forward_kl", "tdpo2"],
    "betas": [0.1, 1.0],
    "task": ControlledTaskSettings(
        n_reviews=3000, n_train_prompts=480, n_val_prompts=200, n_heldout_prompts=64,
        sft=SFTSettings(max_steps=250, batch_size=64, learning_rate=3e-3, warmup_steps=20),
    ),
    "run": RunSettings(max_epochs=2, eval_every_n_steps=10, num_prompts=64),
    "hh": HHSettings(
        max_rows=400,
        val_fraction=0.2,
        vocab_size=512,
        model=TinyLlamaSettings(hidden_size=64, intermediate_size=128, max_position_embeddings=256),
        sft=SFTSettings(max_steps=30, batch_size=16, learning_rate=2e-3, warmup_steps=5),
        max_length=128,
        max_prompt_length=96,
    ),
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], default_env=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of any of the settings below")
    parser.add_argument("--quick", action="store_true", help="small preset (minutes), for tests")
    parser.add_function_arguments(sweep, as_group=False)
    return parser


# ---------------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunSpec:
    """Everything one alignment run depends on (its cache key hashes all of it but the paths)."""

    name: str
    beta: float
    task: ControlledTaskSettings
    run: RunSettings
    upstream: tuple[str, ...]
    """Fingerprints of the task's SFT and pairs stages (and of the SAE for FPO)."""
    task_dir: str
    sae_dir: str | None

    @property
    def key(self) -> str:
        payload = dataclasses.asdict(self) | {"version": RESULTS_VERSION}
        payload = {k: v for k, v in payload.items() if k not in ("task_dir", "sae_dir")}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def dirname(self) -> str:
        return f"{self.name}_b{self.beta:g}_{self.key}"


@dataclass(frozen=True)
class HHSpec:
    """The HH-RLHF check: its settings, and the work directory its cached stage goes under."""

    settings: HHSettings
    root: str

    @property
    def key(self) -> str:
        payload = {"settings": dataclasses.asdict(self.settings), "version": RESULTS_VERSION}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def dirname(self) -> str:
        return f"hh_dpo_{self.key}"


def _trainer(run_dir: Path, max_epochs: int, callbacks: list) -> AlignmentTrainer:
    return AlignmentTrainer(
        max_epochs=max_epochs,
        accelerator="auto",
        devices=1,
        logger=TensorBoardLogger(run_dir, name="tensorboard", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def run_controlled(spec: RunSpec, run_dir: Path) -> dict:
    """One objective × β on the controlled task; returns what ``results.json`` holds."""
    L.seed_everything(spec.run.seed, verbose=False)
    data = ControlledTaskDataModule(spec.task_dir, spec.task, batch_size=spec.run.batch_size, progress=False)
    module = AlignmentModule(
        make_objective(spec.name, spec.beta, spec.sae_dir),
        PolicySpec(path=str(TaskArtifacts(Path(spec.task_dir)).sft_dir)),
        optimizer=partial(torch.optim.AdamW, lr=spec.run.lr),
    )
    callback = SamplingEvaluation(
        every_n_steps=spec.run.eval_every_n_steps,
        reward_fn=SentimentOracle(),
        num_prompts=spec.run.num_prompts,
        samples_per_prompt=spec.run.samples_per_prompt,
        max_new_tokens=spec.task.max_new_tokens,
        seed=spec.run.seed + 1234,
        pairs=False,  # the held-out pairs are evaluated once, at the end, below
    )
    start = time.perf_counter()
    _trainer(run_dir, spec.run.max_epochs, [callback]).fit(module, data)
    stats = pair_statistics(module, data.val_dataloader())
    return {
        "name": spec.name,
        "label": LABELS[spec.name],
        "beta": spec.beta,
        "history": callback.history,
        "margins": stats.margins.tolist(),
        "chosen_seq_kl": stats.chosen_seq_kl.tolist() if stats.chosen_seq_kl is not None else None,
        "rejected_seq_kl": stats.rejected_seq_kl.tolist() if stats.rejected_seq_kl is not None else None,
        "seconds": time.perf_counter() - start,
    }


def run_hh(spec: HHSpec, run_dir: Path) -> dict:
    """Build (or reuse) the HH stage, then the short DPO run from its SFT warm-up; held-out reward accuracy and
    ECE."""
    hh = spec.settings
    stage = build_hh_stage(Path(spec.root), hh)
    L.seed_everything(hh.seed, verbose=False)
    data = PreferenceDataModule(
        path=str(stage / "train.jsonl"),
        tokenizer=str(stage / "sft"),
        row_format="hh",
        val_path=str(stage / "val.jsonl"),
        max_length=hh.max_length,
        max_prompt_length=hh.max_prompt_length,
        batch_size=hh.batch_size,
        seed=hh.seed,
    )
    module = AlignmentModule(
        DPO(beta=hh.beta), PolicySpec(path=str(stage / "sft")), optimizer=partial(torch.optim.AdamW, lr=hh.lr)
    )
    start = time.perf_counter()
    trainer = _trainer(run_dir, hh.max_epochs, [])
    trainer.fit(module, data)
    stats = pair_statistics(module, data.val_dataloader())
    ece, se = calibration(stats.margins.tolist())
    marker = read_marker(stage) or {}
    return {
        "train_pairs": len(data.train_set),
        "val_pairs": len(stats.margins),
        "accuracy": stats.accuracy,
        "ece": ece,
        "ece_se": se,
        "mean_margin": float(stats.margins.mean()),
        "steps": trainer.global_step,
        "sft_final_loss": marker.get("sft_final_loss"),
        "sft_seconds": marker.get("seconds"),
        "seconds": time.perf_counter() - start,
    }


def _child(job: tuple[RunSpec | HHSpec, str, int]) -> tuple[str, str | None]:
    """Run one job in this (fresh) process with its own thread count and log file; never raises."""
    spec, run_dir, threads = job
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    with open(run_dir / "log.txt", "w") as log_file, _redirect_output(log_file):
        logging.basicConfig(level=logging.INFO, force=True, stream=sys.stderr)
        logging.captureWarnings(True)
        try:
            results = run_hh(spec, run_dir) if isinstance(spec, HHSpec) else run_controlled(spec, run_dir)
        except Exception:  # a failed run is reported in the table, the sweep goes on
            traceback.print_exc()
            return str(run_dir), traceback.format_exc(limit=3)
    scratch = run_dir / "results.json.tmp"
    scratch.write_text(json.dumps(results))
    scratch.rename(run_dir / "results.json")
    return str(run_dir), None


@contextlib.contextmanager
def _redirect_output(file):
    """Send this process's stdout and stderr (Python and C level) to ``file``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(file.fileno(), 1)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)


class Runner:
    """Runs jobs in fresh spawned processes (one per job), ``processes`` at a time, in the order submitted, and
    logs each as it finishes; a job can start while the parent still builds what later jobs need."""

    def __init__(self, processes: int, threads: int) -> None:
        self.pool = multiprocessing.get_context("spawn").Pool(processes, maxtasksperchild=1)
        self.threads = threads
        self.submitted: list = []
        self.finished = 0
        self.errors: dict[str, str] = {}

    def submit(self, spec: RunSpec | HHSpec, run_dir: Path) -> None:
        job = (spec, str(run_dir), self.threads)
        self.submitted.append(self.pool.apply_async(_child, (job,), callback=self._finished))

    def _finished(self, result: tuple[str, str | None]) -> None:
        run_dir, error = result
        self.finished += 1
        done = self.finished
        if error:
            self.errors[run_dir] = error.strip().splitlines()[-1]
            log.warning("[%d/%d] %s failed: %s (see its log.txt)", done, len(self.submitted), Path(run_dir).name,
                        self.errors[run_dir])
        else:
            log.info("[%d/%d] %s done", done, len(self.submitted), Path(run_dir).name)

    def wait(self) -> dict[str, str]:
        """Wait for every job; the errors by run directory."""
        for job in self.submitted:
            job.wait()
        return self.errors

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.pool.terminate()
        self.pool.join()


# ---------------------------------------------------------------------------------------------------- stages


def build_sae(root: Path, artifacts: TaskArtifacts, sae: SAESettings, threads: int) -> tuple[Path, str]:
    """Train (or reuse) the SAE that FPO reads, on the residual stream of the task's SFT model."""
    sft_fingerprint = read_marker(artifacts.sft_dir)["fingerprint"]

    def build(out: Path) -> dict:
        command = [
            sys.executable, str(REPO / "tools" / "train_sae.py"),
            "--model", str(artifacts.sft_dir), "--data", str(artifacts.train_pairs_path),
            "--layer", str(sae.layer), "--d-sae", str(sae.d_sae), "--k", str(sae.k),
            "--max-texts", str(sae.max_texts), "--max-epochs", str(sae.max_epochs), "--batch-size", "512",
            "--output", str(out),
        ]
        env = os.environ | {"OMP_NUM_THREADS": str(threads)}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return json.loads((out / "metrics.json").read_text())

    settings = dataclasses.asdict(sae) | {"sft": sft_fingerprint}
    stage = run_stage(root, f"sae-layer{sae.layer}", settings, build)
    return stage.path, stage.fingerprint


def build_hh_stage(root: Path, hh: HHSettings) -> Path:
    """Split the HH file (seeded), train a BPE tokenizer on the training split, warm a small Llama up by SFT on
    its chosen transcripts (each cut to its last ``max_length`` tokens)."""

    def build(out: Path) -> dict:
        with gzip.open(hh.path, "rt", encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()][: hh.max_rows]
        random.Random(hh.seed).shuffle(rows)
        n_val = max(1, round(hh.val_fraction * len(rows)))
        splits = {"val": rows[:n_val], "train": rows[n_val:]}
        for split, split_rows in splits.items():
            (out / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in split_rows))
        texts = [row[key] for row in splits["train"] for key in ("chosen", "rejected")]
        tokenizer = train_bpe_tokenizer(texts, hh.vocab_size, hh.max_length)
        chosen = [tokenizer.decode(ids[-(hh.max_length - 1) :]) for ids in
                  tokenizer([row["chosen"] for row in splits["train"]])["input_ids"]]
        loss = train_sft(chosen, tokenizer, out / "sft", hh.model, hh.sft, hh.seed, progress=False)
        return {"train_rows": len(splits["train"]), "val_rows": n_val, "sft_final_loss": loss}

    settings = {k: v for k, v in dataclasses.asdict(hh).items() if k not in ("beta", "lr", "batch_size", "max_epochs")}
    return run_stage(root, "hh", settings, build).path


def shorter_chosen_rate(path: Path) -> float:
    """How often the chosen transcript is the shorter of the two: the accuracy of a "shorter response wins" rule,
    a shortcut a small model can learn on HH-RLHF harmless (refusals are short)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(len(row["chosen"]) < len(row["rejected"]) for row in rows) / max(1, len(rows))


def train_bpe_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (as GPT-2's, no hub) with ``<pad>``, ``<s>`` and ``</s>``."""
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=max_length
    )


# ---------------------------------------------------------------------------------------------------- sweep


def sweep(
    workdir: str = ".cache/frontier",
    out_dir: str = "docs",
    objectives: list[ObjectiveName] = list(LABELS),  # noqa: B006 (read-only default, the parser copies it)
    betas: list[PositiveFloat] = [0.1, 0.3, 1.0],  # noqa: B006
    task: ControlledTaskSettings = ControlledTaskSettings(n_val_prompts=1000, n_heldout_prompts=512),  # noqa: B008
    run: RunSettings = RunSettings(),  # noqa: B008
    sae: SAESettings = SAESettings(),  # noqa: B008
    hh: HHSettings = HHSettings(),  # noqa: B008
    jobs: PositiveInt = 2,
    threads: PositiveInt = 1,
) -> Path:
    """Build the stages, run every objective × β (cached), check the claims, draw the figures, write the table.

    Args:
        workdir: cache of the task, the SAE, the HH stage and every run.
        out_dir: where ``frontier.md`` and the PNGs go.
        objectives: which objectives to sweep.
        betas: the β values of each.
        task: the controlled task's settings (larger validation and held-out sets than the quickstart's).
        run: training and evaluation of each run.
        sae: the SAE FPO reads.
        hh: the HH-RLHF sanity check.
        jobs: runs at once, each in its own process.
        threads: torch threads per process.
    """
    start = time.perf_counter()
    torch.set_num_threads(threads)
    root = Path(workdir)
    with Runner(jobs, threads) as runner:
        hh_spec = HHSpec(hh, str(root)) if hh.enabled else None
        if hh_spec is not None and not _results_path(root, hh_spec).is_file():
            runner.submit(hh_spec, _results_path(root, hh_spec).parent)  # independent of the task: start it now
        artifacts = build_controlled_task(root / "task", task, progress=False)
        specs = _run_specs(root, artifacts, objectives, betas, task, run, sae, threads)
        pending = [spec for spec in specs if not _results_path(root, spec).is_file()]
        for spec in sorted(pending, key=_expected_cost):
            runner.submit(spec, _results_path(root, spec).parent)
        log.info("%d runs, %d cached; running %d with %d processes", len(specs) + bool(hh_spec),
                 len(specs) + bool(hh_spec) - len(runner.submitted), len(runner.submitted), jobs)
        errors = runner.wait()
    total = len(specs) + bool(hh_spec)
    timing = record_timing(root, time.perf_counter() - start, bool(artifacts.built), len(runner.submitted), total)
    summaries = [RunSummary(**results) for spec in specs
                 if (results := _read_json(_results_path(root, spec))) is not None]
    hh_results = _read_json(_results_path(root, hh_spec)) if hh_spec else None
    if hh_results is not None:
        hh_results["shorter_wins"] = shorter_chosen_rate(root / "hh" / "val.jsonl")
    failed = {spec.dirname: errors.get(str(_results_path(root, spec).parent), "no results")
              for spec in specs + ([hh_spec] if hh_spec else []) if not _results_path(root, spec).is_file()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if summaries:
        plot_frontier(summaries, out / "frontier.png")
        plot_diversity(summaries, out / "diversity.png")
        plot_calibration(summaries, out / "calibration.png")
    settings = locals_settings(workdir=workdir, objectives=objectives, betas=betas, task=task, run=run, sae=sae,
                               hh=hh, jobs=jobs, threads=threads)
    report = write_report(out / "frontier.md", summaries, hh_results, failed, settings, timing)
    log.info("wrote %s (%.1f min)", report, (time.perf_counter() - start) / 60)
    return report


def _run_specs(
    root: Path,
    artifacts: TaskArtifacts,
    objectives: list[str],
    betas: list[float],
    task: ControlledTaskSettings,
    run: RunSettings,
    sae: SAESettings,
    threads: int,
) -> list[RunSpec]:
    """One spec per objective × β, after tokenising the pairs once and building the SAE when FPO is swept."""
    ControlledTaskDataModule(str(artifacts.workdir), task, progress=False).prepare_data()
    upstream = tuple(read_marker(d)["fingerprint"] for d in (artifacts.sft_dir, artifacts.train_pairs_path.parent))
    sae_dir, sae_fingerprint = build_sae(root, artifacts, sae, threads) if "fpo" in objectives else (None, "")
    return [
        RunSpec(name, float(beta), task, run, upstream + ((sae_fingerprint,) if name == "fpo" else ()),
                str(artifacts.workdir), str(sae_dir) if sae_dir else None)
        for name in objectives
        for beta in betas
    ]


def _results_path(root: Path, spec: RunSpec | HHSpec) -> Path:
    return root / "runs" / spec.dirname / "results.json"


def _expected_cost(spec: RunSpec) -> int:
    """Longest first, so the last process to finish is not left alone with a long run."""
    order = ("fpo", "tdpo1", "tdpo2")
    return order.index(spec.name) if spec.name in order else len(order)


def record_timing(root: Path, seconds: float, stages_built: bool, executed: int, total: int) -> dict:
    """Append this invocation's wall time to ``<workdir>/timings.json``; return the latest invocation that ran
    every run (or this one, when none did)."""
    path = root / "timings.json"
    entries = _read_json(path) or []
    entry = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(seconds, 1), "task_stages_built": stages_built,
        "runs_executed": executed, "runs_total": total, "cores": os.cpu_count(),
    }
    entries.append(entry)
    path.write_text(json.dumps(entries, indent=1))
    full = [e for e in entries if e["runs_executed"] == e["runs_total"]]
    return full[-1] if full else entry


def locals_settings(**settings) -> dict:
    return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in settings.items()}


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


# ---------------------------------------------------------------------------------------------------- report


def write_report(
    path: Path, runs: list[RunSummary], hh: dict | None, failed: dict[str, str], settings: dict, timing: dict
) -> Path:
    verdicts = [
        check_diversity_order(runs),
        check_reward_at_equal_kl(runs),
        check_kl_balance(runs),
        check_ece_changes(runs),
    ]
    lines = [
        "# Reward, divergence, diversity and calibration of the objectives",
        "",
        f"Generated by `python tools/frontier.py`: {len(runs)} alignment runs"
        f"{' + the HH-RLHF check' if hh else ''}, {_timing_text(timing)}. Every number below comes from that "
        f"command; rerun it to reproduce (runs are cached in `{settings['workdir']}`).",
        "",
        "![reward vs KL frontier](frontier.png)",
        "",
        "## Claims",
        "",
        "| # | claim | outcome | numbers |",
        "|---|---|---|---|",
    ]
    lines += [_claim_row(i, verdict) for i, verdict in enumerate(verdicts, start=1)]
    lines.append(_hh_row(len(verdicts) + 1, hh))
    lines += ["", *_method_notes(settings), "", "## All runs (end of training)", "", *_run_table(runs)]
    if failed:
        lines += ["", "Runs that failed (see their `log.txt`):", ""]
        lines += [f"- `{name}`: {error}" for name, error in sorted(failed.items())]
    lines += [
        "",
        "## Diversity and calibration",
        "",
        "![entropy and distinct-2 vs reward](diversity.png)",
        "",
        "![calibration](calibration.png)",
        "",
        "## Settings",
        "",
        "```json",
        json.dumps(settings, indent=1).replace(str(REPO.parent) + "/", "../"),
        "```",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def _timing_text(timing: dict) -> str:
    scope = "task, SAE and " if timing["task_stages_built"] else ""
    return (
        f"{scope}{timing['runs_executed']} of {timing['runs_total']} runs built in {timing['seconds'] / 60:.1f} min "
        f"wall on {timing['cores']} shared CPU cores ({timing['date']})"
    )


def _claim_row(i: int, verdict: Verdict) -> str:
    evidence = "<br>".join(verdict.evidence) or "—"
    return f"| {i} | {verdict.claim} | **{verdict.outcome}** | {evidence} |"


def _hh_row(i: int, hh: dict | None) -> str:
    claim = "HH-RLHF (real pairs): held-out reward accuracy and ECE after a short DPO run of a small model"
    if hh is None:
        return f"| {i} | {claim} | not measured | — |"
    accuracy_se = (hh["accuracy"] * (1 - hh["accuracy"]) / hh["val_pairs"]) ** 0.5
    return (
        f"| {i} | {claim} | **measured** | accuracy {hh['accuracy']:.3f}±{accuracy_se:.3f} (chance 0.5; the rule "
        f"\"the shorter response wins\" scores {hh['shorter_wins']:.3f}), ECE {hh['ece']:.3f}±{hh['ece_se']:.3f}, "
        f"mean margin {hh['mean_margin']:+.3f}, on {hh['val_pairs']} held-out pairs; {hh['steps']} DPO steps on "
        f"{hh['train_pairs']} pairs after an SFT warm-up on their chosen transcripts (final SFT loss "
        f"{hh['sft_final_loss']:.2f}); {hh['seconds']:.0f} s |"
    )


def _method_notes(settings: dict) -> list[str]:
    run, task = settings["run"], settings["task"]
    return [
        "How to read it: each run trains from the task's SFT model for "
        f"{run['max_epochs']} epochs (AdamW, lr {run['lr']:g}, batch {run['batch_size']}) and is evaluated every "
        f"{run['eval_every_n_steps']} steps on {run['num_prompts']} held-out prompts × {run['samples_per_prompt']} "
        "samples: `KL` is the Monte-Carlo estimate of KL(π_θ‖π_ref) from the policy's samples (forward: from the "
        "reference's samples), `reward` the mean oracle reward (sentiment, in (0, 1)), `win` the rate at which the "
        "policy's sample beats the reference's for the same prompt; ± is one standard error over the samples. "
        "Samples cut at the length limit are scored without an EOS term. Calibration is measured on "
        f"the held-out pairs ({task['n_val_prompts']} prompts): p = σ(chosen reward − rejected reward) with the "
        "objective's own rewards (β included; TDPO's reward adds β·SeqKL, FPO's is length-normalised), ECE over 10 "
        "confidence bins of max(p, 1−p) against whether the chosen response is picked; ± is the bootstrap "
        "standard error over the pairs. `SeqKL` is Σ_t KL(π_ref‖π_θ) over the held-out chosen and rejected "
        "responses. Claims are judged on the end of training at equal β (claim 2 against DPO's Pareto frontier "
        "over all its β and checkpoints); one seed per run, so differences of the size of the run-to-run noise "
        "are not conclusive.",
    ]


def _run_table(runs: list[RunSummary]) -> list[str]:
    head = (
        "| objective | β | KL(π‖π_ref) | KL(π_ref‖π) | reward | win | entropy/token | distinct-1 | distinct-2 "
        "| accuracy | ECE | SeqKL chosen | SeqKL rejected | time (s) |"
    )
    rows = [head, "|" + "---|" * 14]
    if runs:
        first = runs[0].history[0]
        rows.append(
            f"| SFT reference | — | 0 | 0 | {first['reference_reward']:.3f} | 0.5 | {first['reference_entropy']:.3f} "
            f"| {first['reference_distinct_1']:.3f} | {first['reference_distinct_2']:.3f} | — | — | — | — | — |"
        )
    order = {name: i for i, name in enumerate(LABELS)}
    for run in sorted(runs, key=lambda r: (order.get(r.name, 99), r.beta)):
        f = run.final
        ece, se = calibration(run.margins)
        seq = (
            f"{sum(run.chosen_seq_kl) / len(run.chosen_seq_kl):.2f} | "
            f"{sum(run.rejected_seq_kl) / len(run.rejected_seq_kl):.2f}"
            if run.chosen_seq_kl else "— | —"
        )
        rows.append(
            f"| {run.label} | {run.beta:g} | {f['kl_reverse']:.2f}±{f['kl_reverse_se']:.2f} "
            f"| {f['kl_forward']:.2f}±{f['kl_forward_se']:.2f} | {f['reward']:.3f}±{f['reward_se']:.3f} "
            f"| {f['win_rate']:.3f} | {f['entropy']:.3f} | {f['distinct_1']:.3f} | {f['distinct_2']:.3f} "
            f"| {run.accuracy:.3f} | {ece:.3f}±{se:.3f} | {seq} | {run.seconds:.0f} |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if "--quick" in argv:
        parser.set_defaults({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in QUICK.items()})
    config = parser.parse_args(argv)
    init = parser.instantiate_classes(config)
    sweep(**{k: v for k, v in vars(init).items() if k not in ("config", "quick", "__path__")})


if __name__ == "__main__":
    main()
