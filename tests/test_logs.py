"""Logs a user can read (issue 24, item 7): a run that fails before its first step leaves no version directory,
and the learning rate is one row per optimizer step under gradient accumulation. Through ``lit-align fit`` in a
child process on the tiny Llama."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import yaml

from tests.test_distributed import ROOT, TIMEOUT, loopback_env


def fit(tmp_path, model_dir, tokenizer_dir, explicit_file, *args: str) -> subprocess.CompletedProcess:
    config = {
        "trainer": {"accelerator": "cpu", "max_steps": 3, "accumulate_grad_batches": 2, "log_every_n_steps": 1,
                    "enable_progress_bar": False, "default_root_dir": str(tmp_path / "run"),
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "run")}},
                    "callbacks": [{"class_path": "lit_align.callbacks.LearningRateMonitor"}]},
        "model": {"objective": {"class_path": "lit_align.objectives.DPO"}, "policy": {"path": model_dir}},
        "data": {"class_path": "lit_align.data.PreferenceDataModule",
                 "init_args": {"path": str(explicit_file), "tokenizer": tokenizer_dir, "batch_size": 2,
                               "max_length": 64, "max_prompt_length": 32, "val_fraction": 0}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config", str(tmp_path / "config.yaml"),
                           *args], cwd=ROOT, env=loopback_env(), capture_output=True, text=True, timeout=TIMEOUT)


def test_the_learning_rate_is_one_row_per_optimizer_step(tmp_path, model_dir, tokenizer_dir, explicit_file):
    result = fit(tmp_path, model_dir, tokenizer_dir, explicit_file)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "run" / "lightning_logs" / "version_0" / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["lr-AdamW"]]
    assert [row["step"] for row in rows] == ["0", "1", "2"]  # was: each step twice (2 micro-batches a step)


def test_a_run_that_fails_before_its_first_step_leaves_no_version_directory(tmp_path, model_dir, tokenizer_dir,
                                                                              explicit_file):
    result = fit(tmp_path, model_dir, tokenizer_dir, explicit_file, "--model.policy.lora.target_modules=[nope]")
    assert result.returncode == 2 and "match no module of this llama model" in result.stderr
    assert not list((tmp_path / "run").rglob("version_*"))  # was: version_0 with config.yaml alone


def test_a_tiny_beta_and_more_processes_than_cores_are_one_warning_each(tmp_path, model_dir, tokenizer_dir,
                                                                        explicit_file):
    cores = os.cpu_count()
    result = fit(tmp_path, model_dir, tokenizer_dir, explicit_file, "--model.objective.beta=0.0001",
                 "--trainer.max_steps=1", "--trainer.strategy=ddp", f"--trainer.devices={cores + 1}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("model.objective.beta=0.0001: the loss -log σ(β · margin) stays within 0.05 of ln 2 "
                               "until the log-ratio margin passes 1000 nats") == 1
    assert result.stderr.count(f"trainer.devices={cores + 1} CPU processes on a machine with {cores} cores") == 1


def test_most_pairs_truncated_and_duplicates_are_one_warning_each(tmp_path, model_dir, tokenizer_dir, explicit_file):
    rows = explicit_file.read_text().splitlines(keepends=True)
    explicit_file.write_text("".join(rows * 4))  # every pair 4 times
    result = fit(tmp_path, model_dir, tokenizer_dir, explicit_file, "--trainer.max_steps=1", "--data.max_length=8",
                 "--data.max_prompt_length=4", "--data.val_fraction=0.25")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train: 96 of 96 kept pairs (100%) were cut to fit data.max_length=8 (prompts to " \
           "data.max_prompt_length=4); raise them, or the run trains on cut pairs" in result.stderr
    result = fit(tmp_path, model_dir, tokenizer_dir, explicit_file, "--trainer.max_steps=1",
                 "--data.val_fraction=0.25")
    assert "train: 72 of 96 pairs repeat another pair; they weigh more in training" in result.stderr
    assert "held-out pairs that are copies of training pairs" in result.stderr and "were cut" not in result.stderr
    result = fit(tmp_path, model_dir, tokenizer_dir, explicit_file, "--trainer.max_steps=1",
                 "--data.drop_duplicates=true", "--data.val_fraction=0.25")
    assert "train: dropped 72 duplicate pairs of 96 (drop_duplicates)" in result.stderr
    assert "held-out pairs that are copies" not in result.stderr and "were cut to fit" not in result.stderr
    assert "validation: held out 6 pairs (val_fraction=0.25 of the kept train pairs); training on 18" in result.stderr
