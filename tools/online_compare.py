"""Offline vs on-policy training on the controlled task, over seeds (docs/online.md, issue 29 item 4).

    python -m tools.online_compare --seeds 0 1 2 3 4 --jobs 1      # 60 runs, about 80 minutes on one core
    python -m tools.online_compare --quick                          # 2 steps per run, for a smoke test

Every run is the real command line (``lit-align fit``) in its own process (one thread), on the quickstart's task
(``.cache/quickstart``, built on first use): the offline arm is ``configs/quickstart.yaml`` (the task's 2000 pairs,
sampled once from the SFT model, 32 pairs a step), the on-policy arms ``configs/online.yaml`` with 32 prompts × 2
samples a step (32 pairs, best against worst), both at learning rate 1e-4 with the objective and seed of the row
(the seed orders the pairs or prompts, and seeds the on-policy sampling).
Arms:

- ``offline``: 100 optimizer steps over the fixed pairs;
- ``online``: 100 on-policy steps (equal optimizer steps);
- ``online_tokens``: 62 on-policy steps, the 62 × 64 ≈ 4000 samples the offline pairs hold (equal sampled tokens);
- ``iterative``: 100 steps of iterative rounds: round 0 samples every prompt (2000 × 2) from the SFT model and
  trains on its pairs (63 steps), round 1 samples them all again from that policy and trains until step 100.

At the end each run's :class:`~lit_align.tasks.OracleRewardReport` samples 256 held-out prompts × 2 from the policy
(``task/reward``, ``task/kl_reverse``, ``task/entropy``, ``task/distinct_2``). Each claim "on-policy exceeds
offline" is judged per objective and metric by :mod:`lit_align.eval.verdict` (paired by seed: both arms start from
the same SFT model and are evaluated on the same prompts with the same sampling seed). Results are cached as
``results.json`` per run under ``--workdir``; the table is written to ``--output``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lit_align.eval.verdict import compare

OBJECTIVES = {
    "DPO": ["--model.objective=lit_align.objectives.DPO", "--model.objective.beta=0.1"],
    "f-DPO JS": ["--model.objective=lit_align.objectives.FDPO", "--model.objective.divergence=js",
                 "--model.objective.beta=0.1"],
    "TDPO2": ["--model.objective=lit_align.objectives.TDPO", "--model.objective.variant=2",
              "--model.objective.beta=0.1"],
}
ON_POLICY = ["--data.batch_size=32", "--model.samples_per_prompt=2"]
ROUNDS = ["--model.iterative=true", "--trainer.reload_dataloaders_every_n_epochs=1", "--trainer.max_epochs=null"]
ARMS = {  # name: (config, optimizer steps, extra switches)
    "offline": ("configs/quickstart.yaml", 100, ["--trainer.max_epochs=null"]),
    "online": ("configs/online.yaml", 100, ON_POLICY),
    "online_tokens": ("configs/online.yaml", 62, ON_POLICY),
    "iterative": ("configs/online.yaml", 100, ON_POLICY + ROUNDS),
}
METRICS = {"reward": "oracle reward", "kl_reverse": "KL(π‖π_ref)", "entropy": "entropy", "distinct_2": "distinct-2"}
TIMES = ("online/time/generate_epoch", "online/time/score_epoch", "online/time/train_epoch",
         "online/samples_per_second_epoch")


def command(arm: str, objective: str, seed: int, run_dir: Path, quick: bool) -> list[str]:
    config, steps, extra = ARMS[arm]
    steps = 2 if quick else steps
    seeds = [f"--seed_everything={seed}", f"--data.seed={seed}"]  # the data order: pairs' or prompts'
    seeds += [f"--model.sampling_seed={seed}"] if arm != "offline" else []
    executable = str(Path(sys.executable).with_name("lit-align"))
    return [executable, "fit", "--config", config, *seeds, *OBJECTIVES[objective], *extra,
            f"--trainer.max_steps={steps}", "--model.optimizer.init_args.lr=0.0001",
            f"--trainer.default_root_dir={run_dir}", "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
            f"--trainer.logger.save_dir={run_dir}", "--trainer.logger.name=csv", "--trainer.logger.version=0"]


def last_values(metrics_csv: Path) -> dict[str, float]:
    """The last logged value of every column of a CSVLogger file."""
    values: dict[str, float] = {}
    with metrics_csv.open() as handle:
        for row in csv.DictReader(handle):
            values.update({key: float(value) for key, value in row.items() if value not in ("", None)})
    return values


def run(arm: str, objective: str, seed: int, workdir: Path, quick: bool) -> dict:
    run_dir = workdir / f"{arm}_{objective.replace(' ', '_').replace('-', '')}_{seed}"
    cached = run_dir / "results.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with (run_dir / "log.txt").open("w") as log:
        subprocess.run(command(arm, objective, seed, run_dir, quick), check=True, env=env, stdout=log,
                       stderr=subprocess.STDOUT)
    values = last_values(run_dir / "csv" / "version_0" / "metrics.csv")
    result = {"arm": arm, "objective": objective, "seed": seed, "seconds": time.perf_counter() - start,
              **{name: values[f"task/{name}"] for name in METRICS},
              **{key: values[key] for key in TIMES if key in values}}
    cached.write_text(json.dumps(result, indent=1))
    return result


def table(results: list[dict], seeds: list[int]) -> str:
    """Mean ± sd per arm and metric, then each on-policy arm against offline by the one rule."""
    by = {(r["arm"], r["objective"], r["seed"]): r for r in results}
    lines = ["| objective | arm | " + " | ".join(METRICS.values()) + " | run time, s |",
             "|---|---|" + "---|" * (len(METRICS) + 1)]
    for objective in OBJECTIVES:
        for arm in ARMS:
            rows = [by[arm, objective, s] for s in seeds]
            cells = [f"{statistics.fmean(r[m] for r in rows):.3f} ± {statistics.stdev(r[m] for r in rows):.3f}"
                     if len(rows) > 1 else f"{rows[0][m]:.3f}" for m in METRICS]
            lines.append(f"| {objective} | {arm} | " + " | ".join(cells)
                         + f" | {statistics.fmean(r['seconds'] for r in rows):.0f} |")
    lines += ["", "| objective | claim | verdict | numbers |", "|---|---|---|---|"]
    for objective in OBJECTIVES:
        for arm in ("online", "online_tokens", "iterative"):
            for metric, label in METRICS.items():
                result = compare({s: by[arm, objective, s][metric] for s in seeds},
                                 {s: by["offline", objective, s][metric] for s in seeds})
                lines.append(f"| {objective} | {arm} > offline: {label} | {result.verdict} | {result.text()} |")
    timed = [r for r in results if r["arm"] in ("online", "online_tokens") and TIMES[0] in r]
    if timed:
        split = {key.split("/")[-1].removesuffix("_epoch"): statistics.median(r[key] for r in timed) for key in TIMES}
        lines += ["", "On-policy step split, median over runs of each run's mean per step: " +
                  ", ".join(f"{k} {v:.3f}" for k, v in split.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each one thread)")
    parser.add_argument("--workdir", type=Path, default=Path("runs/online_compare"))
    parser.add_argument("--output", type=Path, default=None, help="the table (markdown); default <workdir>/table.md")
    parser.add_argument("--quick", action="store_true", help="2 steps per run (a smoke test of the tool)")
    args = parser.parse_args(argv)
    jobs = [(arm, objective, seed) for seed in args.seeds for objective in OBJECTIVES for arm in ARMS]
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run(*job, args.workdir, args.quick), jobs))
    text = table(results, args.seeds) + f"\n\n{len(jobs)} runs, {time.perf_counter() - start:.0f} s wall.\n"
    (args.output or args.workdir / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
