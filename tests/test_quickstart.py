"""The quickstart config end to end through the real console script, on a shrunken task."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def test_quickstart_config_runs_and_reports(tmp_path):
    workdir = tmp_path / "task"
    overrides = [
        f"--data.source.workdir={workdir}", f"--model.policy.path={workdir}/sft",
        f"--trainer.default_root_dir={tmp_path}/runs", "--trainer.max_epochs=1",
        "--data.source.task.n_reviews=1500", "--data.source.task.n_train_prompts=200",
        "--data.source.task.n_val_prompts=40", "--data.source.task.n_heldout_prompts=32",
        "--data.source.task.sft.max_steps=40",
    ]
    command = ["lit-align", "fit", "--config", str(CONFIG), *overrides]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output[-4000:]
    assert re.search(r"SFT reference\s+\d\.\d{3}", output) and re.search(r"aligned policy\s+\d\.\d{3}", output)
    assert "held-out implicit-reward accuracy" in output
    assert (workdir / "sft" / "config.json").is_file()
    assert list((tmp_path / "runs").rglob("events.out.tfevents.*")), "TensorBoard logs are written by default"

    built = {path: path.stat().st_mtime_ns for path in workdir.rglob("*") if path.is_file()}
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert {path: path.stat().st_mtime_ns for path in built} == built, "a rerun rebuilt a finished stage"
