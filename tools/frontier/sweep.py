"""The whole sweep: stages, runs, claims, figures and report; and its command line."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from jsonargparse.typing import PositiveFloat, PositiveInt

from lit_align.data import PreferenceDataModule
from lit_align.tasks import (
    ControlledTask,
    ControlledTaskSettings,
)
from lit_align.tasks.pipeline import TaskArtifacts, build_controlled_task
from lit_align.tasks.stages import read_marker
from tools.frontier.claims import (
    RunSummary,
)
from tools.frontier.plots import plot_calibration, plot_diversity, plot_frontier
from tools.frontier.report import write_report
from tools.frontier.runner import Runner
from tools.frontier.settings import LABELS, QUICK, HHSettings, HHSpec, ObjectiveName, RunSettings, RunSpec, SAESettings
from tools.frontier.stages import build_sae, shorter_chosen_rate

log = logging.getLogger("frontier")


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
    seeds: list[int] | None = None,
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
        seeds: run every objective × β once per seed (unset: ``run.seed`` only); with three or more, the claims
            are also judged over seeds (:mod:`tools.frontier.seeds`).
    """
    start = time.perf_counter()
    torch.set_num_threads(threads)
    root = Path(workdir)
    with Runner(jobs, threads) as runner:
        hh_spec = HHSpec(hh, str(root)) if hh.enabled else None
        if hh_spec is not None and not _results_path(root, hh_spec).is_file():
            runner.submit(hh_spec, _results_path(root, hh_spec).parent)  # independent of the task: start it now
        artifacts = build_controlled_task(root / "task", task, progress=False)
        per_seed = [dataclasses.replace(run, seed=seed) for seed in (seeds or [run.seed])]
        specs = [spec for settings in per_seed
                 for spec in _run_specs(root, artifacts, objectives, betas, task, settings, sae, threads)]
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
                               hh=hh, jobs=jobs, threads=threads, seeds=seeds)
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
    source = ControlledTask(str(artifacts.workdir), task, progress=False)
    PreferenceDataModule(source=source, max_length=128, max_prompt_length=32).prepare_data()
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


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], default_env=False)
    parser.add_argument("--config", action=ActionConfigFile, help="a YAML file of any of the settings below")
    parser.add_argument("--quick", action="store_true", help="small preset (minutes), for tests")
    parser.add_function_arguments(sweep, as_group=False)
    return parser


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
