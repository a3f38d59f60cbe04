"""Real Lightning runs of AlignmentModule on a tiny Llama: fit, first-step ln 2, checkpoints, LoRA reference."""

from __future__ import annotations

import math
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from transformers import AutoModelForCausalLM

from lit_align.data import PreferenceDataModule
from lit_align.models.policy import LoraSettings, PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO
from lit_align.reference import DisabledAdapter, FrozenCopy
from lit_align.trainer import AlignmentTrainer


class LossRecorder(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].item())


def make_trainer(root: Path, steps: int, **kwargs) -> AlignmentTrainer:
    options = dict(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    return AlignmentTrainer(**{**options, **kwargs})


def make_data(explicit_file, tokenizer_dir, **kwargs) -> PreferenceDataModule:
    return PreferenceDataModule(
        path=str(explicit_file), tokenizer=tokenizer_dir, max_length=64, max_prompt_length=32, batch_size=4, **kwargs
    )


def adam(lr: float):
    return partial(torch.optim.AdamW, lr=lr)


def test_fit_lowers_loss_and_starts_at_ln2(tmp_path, model_dir, tokenizer_dir, explicit_file):
    recorder = LossRecorder()
    module = AlignmentModule(FDPO(beta=0.5), PolicySpec(path=model_dir), optimizer=adam(3e-3))
    trainer = make_trainer(tmp_path, 30, callbacks=[recorder], limit_val_batches=0)
    trainer.fit(module, make_data(explicit_file, tokenizer_dir, val_fraction=0.0))
    assert recorder.losses[0] == pytest.approx(math.log(2.0), abs=1e-5)
    assert sum(recorder.losses[-5:]) / 5 < 0.5 * math.log(2.0)
    assert not any(p.requires_grad for p in module.reference.model.parameters())
    assert all(not name.startswith("reference") for name in module.state_dict())


def test_lora_reference_is_the_disabled_base(tmp_path, model_dir, tokenizer_dir, explicit_file):
    recorder = LossRecorder()
    spec = PolicySpec(path=model_dir, lora=LoraSettings(r=4, alpha=8))
    module = AlignmentModule(FDPO(), spec, optimizer=adam(1e-2))
    assert isinstance(module.reference, DisabledAdapter)
    trainer = make_trainer(tmp_path, 8, callbacks=[recorder], limit_val_batches=0)
    trainer.fit(module, make_data(explicit_file, tokenizer_dir, val_fraction=0.0))
    assert recorder.losses[0] == pytest.approx(math.log(2.0), abs=1e-5)
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    # one copy of the weights: the reference holds no parameter the policy does not, and no model of its own
    reference_only = {id(p) for p in module.reference.policy.parameters()} - {id(p) for p in module.parameters()}
    assert not reference_only and module.reference.policy is module.policy
    lora = sum(p.numel() for name, p in module.named_parameters() if "lora_" in name)
    base = AutoModelForCausalLM.from_pretrained(model_dir).num_parameters()
    assert sum(p.numel() for p in module.parameters()) == base + lora  # the base weights held once
    assert recorder.losses[-1] < recorder.losses[0]


def test_gradient_checkpointing_and_dtype(tmp_path, model_dir, tokenizer_dir, explicit_file):
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir, gradient_checkpointing=True), optimizer=adam(1e-3))
    trainer = make_trainer(tmp_path, 2, limit_val_batches=0)
    trainer.fit(module, make_data(explicit_file, tokenizer_dir, val_fraction=0.0))
    assert module.policy.is_gradient_checkpointing


def test_frozen_copy_from_config_is_rebuilt_identically():
    spec = PolicySpec(config={"model_type": "llama", "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
                              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1})
    first, second = AlignmentModule(FDPO(), spec), AlignmentModule(FDPO(), spec)
    first.configure_model()
    second.configure_model()
    for a, b in zip(first.reference.model.parameters(), second.reference.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_reference_from_separate_path(model_dir):
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir), reference=FrozenCopy(path=model_dir))
    module.configure_model()
    assert module.reference.model is not module.policy


CONFIG = """
seed_everything: 0
trainer:
  max_steps: 4
  accelerator: cpu
  devices: 1
  limit_val_batches: 1
  val_check_interval: 2
  enable_progress_bar: false
  default_root_dir: {root}
model:
  objective:
    class_path: lit_align.objectives.FDPO
    init_args: {{divergence: alpha, beta: 0.2, alpha: 0.3}}
  policy: {{path: {model}}}
  optimizer:
    class_path: torch.optim.AdamW
    init_args: {{lr: 0.001}}
data:
  class_path: lit_align.data.PreferenceDataModule
  init_args:
    path: {data}
    tokenizer: {tokenizer}
    max_length: 64
    max_prompt_length: 32
    batch_size: 4
    val_fraction: 0.2
"""


def write_config(tmp_path, model_dir, tokenizer_dir, explicit_file) -> Path:
    config = tmp_path / "config.yaml"
    text = CONFIG.format(root=tmp_path / "run", model=model_dir, data=explicit_file, tokenizer=tokenizer_dir)
    config.write_text(text)
    return config


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lit_align", *args], capture_output=True, text=True, timeout=240, check=False
    )


def test_cli_print_config_fit_and_load_checkpoint(tmp_path, model_dir, tokenizer_dir, explicit_file):
    config = write_config(tmp_path, model_dir, tokenizer_dir, explicit_file)
    printed = run_cli("fit", "--config", str(config), "--print_config")
    assert printed.returncode == 0, printed.stderr
    assert "lit_align.objectives.FDPO" in printed.stdout and "divergence: alpha" in printed.stdout

    fitted = run_cli("fit", "--config", str(config))
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    checkpoint = next((tmp_path / "run").rglob("*.ckpt"))
    loaded = AlignmentModule.load_from_checkpoint(checkpoint, weights_only=True)
    assert isinstance(loaded.objective, FDPO) and loaded.objective.alpha == 0.3
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert state and all(key.startswith("policy.") for key in state)
    for name, value in loaded.policy.state_dict().items():
        torch.testing.assert_close(value, state[f"policy.{name}"])


def test_cli_rejects_bad_values_at_parse_time(tmp_path, model_dir, tokenizer_dir, explicit_file):
    config = write_config(tmp_path, model_dir, tokenizer_dir, explicit_file)
    for override, key in (("--model.objective.alpha=1.5", "alpha"), ("--model.objective.beta=-1", "beta"),
                          ("--model.objective.divergence=hellinger", "divergence")):
        result = run_cli("fit", "--config", str(config), override, "--print_config")
        assert result.returncode != 0 and key in result.stderr, result.stderr[-2000:]
