"""DivergenceGuard (issue 23, item 3): a run whose loss or gradient norm explodes while staying finite is stopped
with one line before the diverged step is applied or saved; the last checkpoint holds the weights from before it.
Every run goes through the real ``lit-align fit`` in a subprocess, on the tiny Llama of ``conftest.py``."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import explicit_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
SGD_LR_1E2 = {"class_path": "torch.optim.SGD", "init_args": {"lr": 100.0}}
ADAMW = "torch.optim.AdamW"


def fit(root: Path, model_dir: str, tokenizer_dir: str, data: Path, *overrides: str, objective: str = "SFT",
        optimizer: dict | None = None, steps: int = 12, clip: float | None = 1.0) -> subprocess.CompletedProcess:
    """``lit-align fit`` on the tiny model, a checkpoint after every step (all kept) in ``root / "ckpt"``."""
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": steps, "logger": False,
                    "gradient_clip_val": clip, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(root),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(root / "ckpt"), "every_n_train_steps": 1,
                                                 "save_top_k": -1, "save_last": True}}]},
        "model": {"objective": {"class_path": f"lit_align.objectives.{objective}"}, "policy": {"path": model_dir},
                  "optimizer": optimizer or SGD_LR_1E2},
        "data": {"class_path": "lit_align.data.PreferenceDataModule",
                 "init_args": {"path": str(data), "tokenizer": tokenizer_dir, "batch_size": 4, "max_length": 64,
                               "max_prompt_length": 32, "val_fraction": 0.0}},
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config", str(root / "config.yaml"),
                           *overrides], cwd=ROOT, capture_output=True, text=True, timeout=150, check=False)


def checkpoints(root: Path) -> dict[str, dict]:
    return {path.name: torch.load(path, map_location="cpu", weights_only=True)
            for path in sorted((root / "ckpt").glob("*.ckpt"))}


def largest_weight(checkpoint: dict) -> float:
    return max(value.abs().max().item() for value in checkpoint["state_dict"].values())


ERROR = re.compile(r"error: training diverged at step (\d+): the (loss|gradient norm) was ([\d.e+-]+), (\d+) times its "
                   r"starting level ([\d.e+-]+) \(DivergenceGuard factor 100\); stopped before the step was applied, "
                   r"so no checkpoint holds its weights\. Lower the learning rate \(model\.optimizer lr, now "
                   r"(\S+)\) or clip gradients \(trainer\.gradient_clip_val, now (\S+)\); DivergenceGuard factor: "
                   r"null switches this check off")


def one_error_line(result: subprocess.CompletedProcess) -> re.Match:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0] == result.stderr.splitlines()[-1], result.stderr[-3000:]
    match = ERROR.fullmatch(lines[0])
    assert match, lines[0]
    return match


@pytest.fixture(scope="module")
def sgd_runs(tmp_path_factory, model_dir, tokenizer_dir) -> dict:
    """SFT at SGD lr 1e2 with gradients clipped to 1: the loss climbs from 6 to thousands, every value finite.
    Run with the default guard, and with the guard switched off."""
    root = tmp_path_factory.mktemp("sgd")
    data = write_jsonl(root / "pairs.jsonl", explicit_rows())
    off = ("--trainer.callbacks+=lit_align.callbacks.DivergenceGuard", "--trainer.callbacks.factor=null")
    return {"guarded": (fit(root / "guarded", model_dir, tokenizer_dir, data), root / "guarded"),
            "off": (fit(root / "off", model_dir, tokenizer_dir, data, *off), root / "off")}


def test_a_run_climbing_to_a_huge_loss_stops_before_the_diverged_step_is_saved(sgd_runs):
    result, root = sgd_runs["guarded"]
    error = one_error_line(result)
    step, value, times, level = int(error[1]), float(error[3]), int(error[4]), float(error[5])
    assert 1 <= step < 12 and times > 100 and value > 100 * level
    assert error[6] == "100" and error[7] == "1.0"
    saved = checkpoints(root)
    # only checkpoints from before the diverged step: the newest holds the weights that step started from
    assert max(c["global_step"] for c in saved.values()) == step == saved["last.ckpt"]["global_step"]
    assert set(saved) == {f"epoch=0-step={n}.ckpt" for n in range(1, step + 1)} | {"last.ckpt"}
    # they are the weights the same run (guard off) had after `step` steps, and finite
    _, off_root = sgd_runs["off"]
    same = checkpoints(off_root)[f"epoch=0-step={step}.ckpt"]["state_dict"]
    for name, weight in saved["last.ckpt"]["state_dict"].items():
        assert torch.equal(weight, same[name]), name
    assert math.isfinite(largest_weight(saved["last.ckpt"]))
    # the guard's state is in the checkpoint: its starting level, from step 0
    guard = saved["last.ckpt"]["callbacks"]["DivergenceGuard"]
    assert len(guard["start"]["loss"]) == len(guard["start"]["gradient norm"]) == 1


def test_switched_off_the_same_run_trains_to_its_end_as_before(sgd_runs):
    result, root = sgd_runs["off"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "error:" not in result.stderr
    saved = checkpoints(root)
    assert saved["last.ckpt"]["global_step"] == 12  # what every such run did before the guard existed


def test_a_resumed_run_keeps_the_starting_level_and_stops_at_the_same_step(sgd_runs, model_dir, tokenizer_dir):
    result, root = sgd_runs["guarded"]
    step = one_error_line(result)[1]
    again = fit(root.parent / "resumed", model_dir, tokenizer_dir, Path(root.parent / "pairs.jsonl"),
                f"--ckpt_path={root / 'ckpt' / 'last.ckpt'}")
    assert one_error_line(again)[1] == step  # without the restored level the diverged step would set a new one


def test_adamw_at_lr_1e2_stops_at_the_first_exploded_loss(tmp_path, model_dir, tokenizer_dir, explicit_file):
    # AdamW moves every weight by about lr on its first step (largest weight 1 -> 101): the loss at step 1 is
    # thousands of times ln 2 while finite; NonFiniteGuard alone stopped three steps later, with a traceback
    adamw = {"class_path": ADAMW, "init_args": {"lr": 100.0, "weight_decay": 0.0}}
    result = fit(tmp_path, model_dir, tokenizer_dir, explicit_file, objective="FDPO", optimizer=adamw, clip=None)
    error = one_error_line(result)
    assert error[1] == "1" and error[2] == "loss" and abs(float(error[5]) - math.log(2)) < 1e-3
    assert {c["global_step"] for c in checkpoints(tmp_path).values()} == {1}


def test_a_healthy_run_converging_to_a_tiny_loss_is_not_stopped(tmp_path, model_dir, tokenizer_dir, explicit_file):
    # f-DPO at AdamW lr 1: the loss falls from ln 2 to 0 and 1e-30, so that step 23's 3e-19 is 10^4 times the
    # running median of the steps before it; a rule on the running median would stop this run there
    adamw = {"class_path": ADAMW, "init_args": {"lr": 1.0, "weight_decay": 0.0}}
    result = fit(tmp_path, model_dir, tokenizer_dir, explicit_file, objective="FDPO", optimizer=adamw, steps=30)
    assert result.returncode == 0, result.stderr[-3000:]
    last = checkpoints(tmp_path)["last.ckpt"]
    assert last["global_step"] == 30
    assert last["callbacks"]["DivergenceGuard"]["start"]["loss"] == [pytest.approx(math.log(2), abs=1e-4)]
