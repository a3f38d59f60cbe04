"""TDPO's Table 1 orderings on HH-RLHF at small scale: DPO, f-DPO (forward KL), TDPO1 and TDPO2 from one shared
SFT warm-up, several seeds each; held-out preference accuracy and the entropy of sampled responses.

    python -m tools.hh_orderings                 # 4 objectives × 5 seeds -> docs/hh_orderings.md
    python -m tools.hh_orderings --quick         # minutes, small model and data -> runs/hh_orderings_quick

The HH stage (seeded split of data/'s harmless-base file, a byte-level BPE tokenizer, a small Llama
warmed up by SFT on the chosen transcripts) is the frontier's (:mod:`tools.frontier.stages`), built once and
cached; every run starts from its SFT model. Each run (objective × seed; the seed sets the initial shuffle and dropout
state) is a fresh process whose ``results.json`` is cached under ``--workdir``:

- ``accuracy``: the fraction of held-out pairs whose chosen response gets the higher reward, each objective
  with its own implicit reward (TDPO's includes its β·SeqKL term), as TDPO's Table 1 "Alignment: Accuracy";
- ``entropy``: mean predictive entropy per token along responses sampled (temperature 1) from the policy for
  held-out prompts (:class:`~lit_align.eval.TokenEntropy`), the "Diversity: Entropy" column;
- ``ece_margin`` (:class:`~lit_align.eval.PreferenceCalibrationError`, σ of the reward margin),
  ``ece_likelihood`` (:class:`~lit_align.eval.LikelihoodCalibrationError`, the f-DPO paper's measure, the mean
  token log-prob counting the end token) and ``ece_likelihood_no_eos`` (the same without it, the authors' reading:
  ``pair_statistics(exclude_eos=True)``).

Each ordering is judged over seeds by the one rule of :mod:`lit_align.eval.verdict`: the 95% t-interval of the
difference, paired by seed (every objective runs the same seeds: the same data order from the same SFT model, the
same evaluation), Welch's where the seeds differ; ``holds`` / ``not shown`` / ``reversed``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import torch
from jsonargparse import ArgumentParser
from jsonargparse.typing import PositiveInt
from transformers import AutoTokenizer

from lit_align.data import PreferenceDataModule
from lit_align.data.layouts import HH_ASSISTANT
from lit_align.eval import (
    LikelihoodCalibrationError,
    PreferenceCalibrationError,
    TokenEntropy,
    ended_before,
    pair_statistics,
    sample_continuations,
    score_responses,
)
from lit_align.eval.verdict import compare
from lit_align.models.policy import PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import DPO, FDPO, TDPO, Objective
from lit_align.tasks import SFTSettings, TinyLlamaSettings
from tools.frontier.runner import _redirect_output
from tools.frontier.runs import _trainer
from tools.frontier.settings import HHSettings
from tools.frontier.stages import build_hh_stage

log = logging.getLogger("hh_orderings")
LABELS = {"sft": "SFT reference", "dpo": "DPO", "forward_kl": "f-DPO (forward KL)", "tdpo1": "TDPO1",
          "tdpo2": "TDPO2"}
PAPER = {"forward_kl": (54.71, 4.708), "dpo": (59.43, 3.196), "tdpo1": (60.08, 4.727), "tdpo2": (67.33, 4.915)}
"""TDPO's Table 1 (Anthropic HH, Pythia-2.8B): accuracy (%) and entropy of each method."""
ORDERINGS = [("accuracy", "tdpo2", "tdpo1"), ("accuracy", "tdpo1", "dpo"), ("accuracy", "dpo", "forward_kl"),
             ("entropy", "tdpo2", "tdpo1"), ("entropy", "tdpo1", "forward_kl"), ("entropy", "forward_kl", "dpo")]
"""The paper's Table 1 orderings, each ``(metric, higher, lower)``."""


@dataclass(frozen=True)
class SampleSettings:
    """Sampling for the entropy column."""

    num_prompts: PositiveInt = 64
    """Held-out prompts (the first ones of the validation split), one sample each."""
    max_prompt_tokens: PositiveInt = 96
    """Each prompt is cut to its last tokens (the model's context is short)."""
    max_new_tokens: PositiveInt = 48
    seed: int = 1234


def make_objective(name: str, beta: float) -> Objective:
    if name == "dpo":
        return DPO(beta=beta)
    if name == "forward_kl":
        return FDPO(divergence="forward_kl", beta=beta)
    if name in ("tdpo1", "tdpo2"):
        return TDPO(variant=int(name[-1]), beta=beta, alpha=0.5)
    raise ValueError(f"unknown objective {name!r}; choose from {list(LABELS)[1:]}")


def heldout_prompts(stage: Path, tokenizer, sample: SampleSettings) -> list[str]:
    """The prompts of the first validation pairs (up to the last ``Assistant:``), each cut to its last tokens."""
    rows = [json.loads(line) for line in (stage / "val.jsonl").read_text().splitlines() if line.strip()]
    prompts = [row["chosen"][: row["chosen"].rfind(HH_ASSISTANT) + len(HH_ASSISTANT)] for row in rows]
    ids = tokenizer(prompts[: sample.num_prompts])["input_ids"]
    return [tokenizer.decode(row[-sample.max_prompt_tokens :]) for row in ids]


def run_one(name: str, seed: int, stage: Path, hh: HHSettings, sample: SampleSettings, run_dir: Path,
            max_steps: int = -1) -> dict:
    """Train ``name`` from the SFT model with ``seed`` (``sft``: no training) for ``hh.max_epochs`` epochs or
    ``max_steps`` optimizer steps, whichever comes first; then measure it."""
    L.seed_everything(seed, verbose=False)
    data = PreferenceDataModule(
        path=str(stage / "train.jsonl"), tokenizer=str(stage / "sft"), row_format="hh",
        val_path=str(stage / "val.jsonl"), max_length=hh.max_length, max_prompt_length=hh.max_prompt_length,
        batch_size=hh.batch_size, seed=seed,
    )
    module = AlignmentModule(make_objective("dpo" if name == "sft" else name, hh.beta),
                             PolicySpec(path=str(stage / "sft")), optimizer=partial(torch.optim.AdamW, lr=hh.lr))
    start = time.perf_counter()
    trainer = _trainer(run_dir, 0 if name == "sft" else hh.max_epochs, [])
    trainer.fit_loop.epoch_loop.max_steps = max_steps
    trainer.fit(module, data)
    stats = pair_statistics(module, data.val_dataloader())
    tokenizer = AutoTokenizer.from_pretrained(stage / "sft")
    no_eos = pair_statistics(module, data.val_dataloader(), exclude_eos=True, end_ids=[tokenizer.eos_token_id])
    margin_ece, likelihood_ece, authors_ece = (PreferenceCalibrationError(), LikelihoodCalibrationError(),
                                               LikelihoodCalibrationError())
    margin_ece.update(stats.margins)
    likelihood_ece.update(stats.chosen_mean_logps, stats.rejected_mean_logps)
    authors_ece.update(no_eos.chosen_mean_logps, no_eos.rejected_mean_logps)
    prompts = heldout_prompts(stage, tokenizer, sample)
    texts = [s[0] for s in sample_continuations(module.policy, tokenizer, prompts, max_new_tokens=sample.max_new_tokens,
                                                seed=sample.seed)]
    entropy = TokenEntropy()
    score_responses(module.policy, tokenizer, prompts, texts, entropy=entropy,
                    ended=ended_before(tokenizer, prompts, texts, sample.max_new_tokens))
    return {
        "name": name, "seed": seed, "accuracy": stats.accuracy, "entropy": float(entropy.compute()),
        "ece_margin": float(margin_ece.compute()), "ece_likelihood": float(likelihood_ece.compute()),
        "ece_likelihood_no_eos": float(authors_ece.compute()),
        "val_pairs": len(stats.margins), "steps": trainer.global_step,
        "mean_words": statistics.fmean(len(t.split()) for t in texts), "seconds": time.perf_counter() - start,
    }


def _child(job: tuple) -> tuple[str, str | None]:
    name, seed, stage, hh, sample, run_dir, threads, max_steps = job
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    with open(run_dir / "log.txt", "w") as log_file, _redirect_output(log_file):
        try:
            results = run_one(name, seed, Path(stage), hh, sample, run_dir, max_steps)
        except Exception:  # reported in the table, the others go on
            traceback.print_exc()
            return str(run_dir), traceback.format_exc(limit=3).strip().splitlines()[-1]
    (run_dir / "results.json").write_text(json.dumps(results))
    return str(run_dir), None


def orderings(
    workdir: str = ".cache/hh_orderings",
    out: str = "docs/hh_orderings.md",
    objectives: list[str] = ["dpo", "forward_kl", "tdpo1", "tdpo2"],  # noqa: B006
    seeds: list[int] = [0, 1, 2, 3, 4],  # noqa: B006
    hh: HHSettings = HHSettings(),  # noqa: B008
    sample: SampleSettings = SampleSettings(),  # noqa: B008
    max_steps: int = 64,
    jobs: PositiveInt = 2,
    threads: PositiveInt = 1,
) -> Path:
    """Build the HH stage, run every objective × seed (cached) and the SFT reference, write the report.

    ``max_steps`` caps each run's optimizer steps (-1: ``hh.max_epochs`` epochs); 64 is half an epoch of the
    default split (13 runs, 3 seeds, took 26 min on two shared cores; 5 seeds make 21). A cached run without the
    no-EOS likelihood ECE (older than it) is run again."""
    start = time.perf_counter()
    torch.set_num_threads(threads)
    stage = build_hh_stage(Path(workdir), hh)
    key = f"b{hh.beta:g}_lr{hh.lr:g}_e{hh.max_epochs}_s{max_steps}"
    cells = [("sft", 0)] + [(name, seed) for seed in seeds for name in objectives]
    dirs = {cell: Path(workdir) / "runs" / f"{cell[0]}_s{cell[1]}_{key}" for cell in cells}
    pending = [cell for cell in cells if not _complete(dirs[cell] / "results.json")]
    errors: dict[str, str] = {}
    with multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
        jobs_ = [(name, seed, str(stage), hh, sample, str(dirs[(name, seed)]), threads, max_steps)
                 for name, seed in pending]
        for run_dir, error in pool.imap_unordered(_child, jobs_):
            log.info("%s %s", Path(run_dir).name, f"failed: {error}" if error else "done")
            if error:
                errors[Path(run_dir).name] = error
    results = [json.loads((d / "results.json").read_text()) for d in dirs.values() if (d / "results.json").is_file()]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report(results, errors, hh, sample, len(pending), time.perf_counter() - start))
    log.info("wrote %s (%.1f min)", path, (time.perf_counter() - start) / 60)
    return path


def _complete(path: Path) -> bool:
    return path.is_file() and "ece_likelihood_no_eos" in json.loads(path.read_text())


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error over seeds (0 for a single seed)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0)


def judge(by_name: dict[str, list[dict]], metric: str, high: str, low: str) -> tuple[str, str]:
    """Verdict on ``metric(high) > metric(low)`` over seeds (:func:`lit_align.eval.verdict.compare`: paired by
    seed), and its numbers: the two seed means, the difference, its 95% interval, t against its critical value."""
    if high not in by_name or low not in by_name:
        return "not measured", "—"
    a, b = ({r["seed"]: r[metric] for r in by_name[name]} for name in (high, low))
    judged = compare(a, b)
    return judged.verdict, f"{statistics.fmean(a.values()):.3f} vs {statistics.fmean(b.values()):.3f}: {judged.text()}"


def commit() -> str:
    """The checkout's commit (``unknown`` outside a git checkout)."""
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return found.stdout.strip() or "unknown"


def report(results: list[dict], errors: dict[str, str], hh: HHSettings, sample: SampleSettings, executed: int,
           seconds: float) -> str:
    by_name: dict[str, list[dict]] = {}
    for r in results:
        by_name.setdefault(r["name"], []).append(r)
    first = next((r for r in results if r["name"] != "sft"), {})
    lines = [
        "# TDPO's Table 1 orderings on HH-RLHF at small scale",
        "",
        f"Generated by `python -m tools.hh_orderings` on commit `{commit()}`, {time.strftime('%Y-%m-%d')} "
        f"({executed} runs executed in {seconds / 60:.1f} min on 2 shared CPU cores; cached runs reused). A small "
        "Llama (hidden "
        f"{hh.model.hidden_size}, {hh.model.num_hidden_layers} layers, BPE vocabulary {hh.vocab_size}) is warmed "
        f"up by SFT ({hh.sft.max_steps} steps) on the chosen transcripts of the training split of "
        "`data/hh-rlhf-harmless-base-test.jsonl.gz`, then trained by each objective for "
        f"{first.get('steps', '?')} steps (β {hh.beta:g}, AdamW lr {hh.lr:g}, batch "
        f"{hh.batch_size}; TDPO α 0.5), once per seed. Accuracy: held-out pairs ({first.get('val_pairs', '?')}) "
        "whose chosen response gets the higher implicit reward (each objective's own). Entropy: mean predictive "
        f"entropy per token along one sample of each of {sample.num_prompts} held-out prompts (cut to their last "
        f"{sample.max_prompt_tokens} tokens, ≤ {sample.max_new_tokens} new tokens, temperature 1, same seed for "
        "every model). ECE (margin): 10-bin ECE of σ(r_w − r_l), confidence max(p, 1−p) "
        "(`PreferenceCalibrationError`). ECE (likelihood): the f-DPO paper's measure, 10-bin ECE of "
        "exp(mean token log-prob of the chosen response) against whether the policy's per-token log-prob prefers "
        "the chosen response (`LikelihoodCalibrationError`); the mean counts the response's end token, the "
        "authors' code scores the text without it: the \"no EOS\" column (`pair_statistics(exclude_eos=True)`). ± is "
        "one standard error over seeds.",
        "",
        "| objective | seeds | accuracy | entropy/token | ECE (margin) | ECE (likelihood) | ECE (likelihood, no EOS) "
        "| words/sample | paper accuracy (%) | paper entropy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in LABELS:
        runs = by_name.get(name)
        if not runs:
            continue
        cols = [mean_se([r[m] for r in runs]) if all(m in r for r in runs) else None
                for m in ("accuracy", "entropy", "ece_margin", "ece_likelihood", "ece_likelihood_no_eos")]
        cells = [f"{c[0]:.3f}±{c[1]:.3f}" if c else "—" for c in cols]
        if name == "sft":  # the policy is the reference: every margin is 0, no reward accuracy or margin ECE
            cells[0] = cells[2] = "—"
        paper = PAPER.get(name, ("—", "—"))
        lines.append(f"| {LABELS[name]} | {len(runs)} | " + " | ".join(cells)
                     + f" | {statistics.fmean(r['mean_words'] for r in runs):.1f} | {paper[0]} | {paper[1]} |")
    lines += ["", "## The paper's orderings, judged over seeds", "",
              "Judged by `lit_align.eval.verdict`: the two-sided 95% t-interval of the difference, paired by seed "
              "(every objective ran the same seeds), with the t critical value for its degrees of freedom. An "
              "ordering *holds* when the interval lies above 0, is *reversed* when it lies below 0, and is *not "
              "shown* otherwise (with the seeds per arm the observed difference would need).", "",
              "| ordering (paper) | verdict here | numbers (seed means; Δ, interval, t vs critical value) |",
              "|---|---|---|"]
    for metric, high, low in ORDERINGS:
        verdict, numbers = judge(by_name, metric, high, low)
        lines.append(f"| {metric}: {LABELS[high]} > {LABELS[low]} | **{verdict}** | {numbers} |")
    if errors:
        lines += ["", "Runs that failed (see their `log.txt`):", ""] + [f"- `{k}`: {v}" for k, v in errors.items()]
    settings = {"hh": dataclasses.asdict(hh), "sample": dataclasses.asdict(sample)}
    settings["hh"]["path"] = "data/" + Path(hh.path).name
    return "\n".join(lines + ["", "## Settings", "", "```json", json.dumps(settings, indent=1), "```", ""])


QUICK = {
    "workdir": ".cache/hh_orderings_quick",
    "out": "runs/hh_orderings_quick/hh_orderings.md",
    "seeds": [0, 1],
    "hh": HHSettings(max_rows=200, val_fraction=0.2, vocab_size=512,
                     model=TinyLlamaSettings(hidden_size=32, intermediate_size=64, max_position_embeddings=256),
                     sft=SFTSettings(max_steps=10, batch_size=16, learning_rate=2e-3, warmup_steps=2),
                     max_length=96, max_prompt_length=64),
    "sample": SampleSettings(num_prompts=8, max_prompt_tokens=32, max_new_tokens=8),
}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    argv = sys.argv[1:] if argv is None else argv
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], default_env=False)
    parser.add_argument("--quick", action="store_true", help="small preset (minutes)")
    parser.add_function_arguments(orderings, as_group=False)
    if "--quick" in argv:
        parser.set_defaults({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in QUICK.items()})
    init = parser.instantiate_classes(parser.parse_args(argv))
    orderings(**{k: v for k, v in vars(init).items() if k not in ("quick", "__path__")})


if __name__ == "__main__":
    main()
