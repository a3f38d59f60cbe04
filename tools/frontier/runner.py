"""Jobs in fresh spawned processes, each with its own thread count and log file."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import sys
import traceback
from pathlib import Path

import torch

from tools.frontier.runs import run_controlled, run_hh
from tools.frontier.settings import HHSpec, RunSpec

log = logging.getLogger("frontier")


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
