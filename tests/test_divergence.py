"""DivergenceGuard (issue 23, item 3): a run whose loss or gradient norm explodes while staying finite, and whose
weights leave their scale, is stopped with one line before the diverged step is applied or saved; the last
checkpoint holds the weights from before it. A healthy f-DPO forward-KL or α run whose loss and gradient norm are
hundreds of times their start, the weights near theirs, trains on. Every run goes through the real ``lit-align fit``
in a subprocess, on the tiny Llama of ``conftest.py``."""

from __future__ import annotations

import csv
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lit_align.callbacks import DivergenceGuard
from tests.conftest import explicit_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
SGD_LR_1E2 = {"class_path": "torch.optim.SGD", "init_args": {"lr": 100.0}}
ADAMW = "torch.optim.AdamW"


def fit(root: Path, model_dir: str, tokenizer_dir: str, data: Path, *overrides: str, objective: str = "SFT",
        optimizer: dict | None = None, steps: int = 12, clip: float | None = 1.0, objective_args: dict | None = None,
        log_steps: bool = False) -> subprocess.CompletedProcess:
    """``lit-align fit`` on the tiny model, a checkpoint after every step (all kept) in ``root / "ckpt"``;
    ``log_steps``: every step's metrics in ``root / "csv" / "metrics.csv"``."""
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger",
              "init_args": {"save_dir": str(root), "name": "csv", "version": ""}} if log_steps else False
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": steps, "logger": logger, "log_every_n_steps": 1,
                    "gradient_clip_val": clip, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(root),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"dirpath": str(root / "ckpt"), "every_n_train_steps": 1,
                                                 "save_top_k": -1, "save_last": True}}]},
        "model": {"objective": {"class_path": f"lit_align.objectives.{objective}", "init_args": objective_args or {}},
                  "policy": {"path": model_dir},
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


NUMBER = r"[\d.e+-]+"
ERROR = re.compile(rf"error: training diverged at step (?P<step>\d+): the (?P<culprit>loss|gradient norm) was "
                   rf"(?P<value>{NUMBER}), (?P<times>\d+) times its starting level (?P<level>{NUMBER})"
                   rf"(?:, and the weights' norm (?P<weights>{NUMBER}), (?P<grown>{NUMBER}) times its start "
                   rf"(?P<start>{NUMBER}))? \(DivergenceGuard factor 100(?P<gate>, weights 2)?\); stopped before the "
                   r"step was applied, so no checkpoint holds its weights\. Lower the learning rate \(model\.optimizer "
                   r"lr, now (?P<lr>\S+)\) or clip gradients \(trainer\.gradient_clip_val, now (?P<clip>\S+)\); "
                   r"DivergenceGuard factor: null switches this check off")


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
    step, value, times, level = int(error["step"]), float(error["value"]), int(error["times"]), float(error["level"])
    assert 1 <= step < 12 and times > 100 and value > 100 * level
    assert error["lr"] == "100" and error["clip"] == "1.0" and error["gate"]
    # and the weights have left their scale: their norm over twice its start (10.5 times at step 2)
    assert float(error["grown"]) > 2 and float(error["weights"]) > 2 * float(error["start"])
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
    # the guard's state is in the checkpoint: its starting levels, from step 0
    start = saved["last.ckpt"]["callbacks"]["DivergenceGuard"]["start"]
    assert len(start["loss"]) == len(start["gradient norm"]) == len(start["weight norm"]) == 1
    assert start["weight norm"][0] == pytest.approx(float(error["start"]), rel=1e-3)


def test_switched_off_the_same_run_trains_to_its_end_as_before(sgd_runs):
    result, root = sgd_runs["off"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "error:" not in result.stderr
    saved = checkpoints(root)
    assert saved["last.ckpt"]["global_step"] == 12  # what every such run did before the guard existed


def test_a_resumed_run_keeps_the_starting_level_and_stops_at_the_same_step(sgd_runs, model_dir, tokenizer_dir):
    result, root = sgd_runs["guarded"]
    step = one_error_line(result)["step"]
    again = fit(root.parent / "resumed", model_dir, tokenizer_dir, Path(root.parent / "pairs.jsonl"),
                f"--ckpt_path={root / 'ckpt' / 'last.ckpt'}")
    assert one_error_line(again)["step"] == step  # without the restored levels the diverged step would set new ones


def test_adamw_at_lr_1e2_stops_at_the_first_exploded_loss(tmp_path, model_dir, tokenizer_dir, explicit_file):
    # AdamW moves every weight by about lr on its first step (largest weight 1 -> 101): the loss at step 1 is
    # thousands of times ln 2 while finite; NonFiniteGuard alone stopped three steps later, with a traceback
    adamw = {"class_path": ADAMW, "init_args": {"lr": 100.0, "weight_decay": 0.0}}
    result = fit(tmp_path, model_dir, tokenizer_dir, explicit_file, objective="FDPO", optimizer=adamw, clip=None)
    error = one_error_line(result)
    assert error["step"] == "1" and error["culprit"] == "loss" and abs(float(error["level"]) - math.log(2)) < 1e-3
    assert float(error["grown"]) > 100  # every weight moved by about 100: their norm 13.4 -> about 19,000
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


def step_losses(root: Path) -> list[float]:
    """Each optimizer step's training loss, in order, from the CSV log of ``fit(..., log_steps=True)``."""
    with (root / "csv" / "metrics.csv").open(newline="") as handle:
        return [float(row["train/loss_step"]) for row in csv.DictReader(handle) if row.get("train/loss_step")]


def weight_norm(checkpoint: dict) -> float:
    return math.sqrt(sum(value.double().square().sum().item() for name, value in checkpoint["state_dict"].items()
                         if name.startswith("policy.")))


HEALTHY = {  # AdamW at a high lr for the tiny model: once the policy has lowered a chosen response's probability,
    # the score -β·exp(-log-ratio) (forward KL; α: -β·exp(-α·log-ratio)/α) makes the loss and gradient norm spike
    # at step 4 (forward KL: loss 350 = 505 × ln 2, gradient norm 1,487 × its start; α: loss 7,225, gradient norm
    # 10,860 ×), the weights' norm 1.05 and 1.2 times its start; the loss then falls to 0
    "forward_kl": ({"divergence": "forward_kl", "beta": 1.0}, 0.01),
    "alpha_0.5": ({"divergence": "alpha", "alpha": 0.5, "beta": 1.0}, 0.02),
}


@pytest.mark.parametrize("name", list(HEALTHY))
def test_a_healthy_forward_kl_or_alpha_run_whose_loss_explodes_is_not_stopped(name, tmp_path, model_dir, tokenizer_dir,
                                                                               explicit_file):
    args, lr = HEALTHY[name]
    adamw = {"class_path": ADAMW, "init_args": {"lr": lr, "weight_decay": 0.0}}
    result = fit(tmp_path, model_dir, tokenizer_dir, explicit_file, objective="FDPO", objective_args=args,
                 optimizer=adamw, steps=10, log_steps=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "error:" not in result.stderr
    last = checkpoints(tmp_path)["last.ckpt"]
    assert last["global_step"] == 10
    guard = last["callbacks"]["DivergenceGuard"]["start"]
    # the loss exceeded 100 times its starting level: a rule on the loss alone stopped this run
    losses = step_losses(tmp_path)
    assert len(losses) == 10 and guard["loss"] == [pytest.approx(losses[0], rel=1e-4)]
    assert max(losses) > 100 * losses[0] and losses[-1] < losses[0]
    # while the weights stayed near their starting norm
    assert weight_norm(last) < 1.5 * guard["weight norm"][0]


def test_judged_on_the_loss_alone_the_healthy_forward_kl_run_is_stopped(tmp_path, model_dir, tokenizer_dir,
                                                                       explicit_file):
    # DivergenceGuard weights: null is the rule before the weights were judged too: it stops the run above
    args, lr = HEALTHY["forward_kl"]
    adamw = {"class_path": ADAMW, "init_args": {"lr": lr, "weight_decay": 0.0}}
    alone = ("--trainer.callbacks+=lit_align.callbacks.DivergenceGuard", "--trainer.callbacks.weights=null")
    result = fit(tmp_path, model_dir, tokenizer_dir, explicit_file, *alone, objective="FDPO", objective_args=args,
                 optimizer=adamw, steps=10)
    error = one_error_line(result)
    assert error["culprit"] == "loss" and int(error["times"]) > 100 and not error["gate"] and not error["weights"]
    assert 1 <= int(error["step"]) < 10


def test_the_weights_setting_is_validated():
    for bad in (1.0, 0.5):
        with pytest.raises(ValueError, match="weights must be > 1"):
            DivergenceGuard(weights=bad)
    assert DivergenceGuard(weights=None).weights is None
