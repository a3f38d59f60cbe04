"""``configs/dpo_custom.yaml``, the one-file recipe for a user's own run, as shipped: only the paths (and the
run's length) are given. It runs as given on this CPU box (accelerator, devices and strategy automatic, bf16
autocast, warmup + cosine) and writes the policy with ``SaveHFModel``; with ``configs/overlays/fsdp2.yaml`` after
it, it trains under FSDP2 and ``lit-align export`` writes the same model from the sharded checkpoint with the
settings read from the checkpoint alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import explicit_rows, write_jsonl
from tests.test_distributed import ROOT, TIMEOUT, loopback_env


def lit_align(*args: str | Path) -> None:
    result = subprocess.run([sys.executable, "-m", "lit_align", *map(str, args)], cwd=ROOT, env=loopback_env(),
                            capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr[-4000:]


def user_run(tmp_path, model_dir, tokenizer_dir, *overlays: str) -> Path:
    """``lit-align fit --config configs/dpo_custom.yaml [--config overlay ...]`` with a user's two paths."""
    model = tmp_path / "sft"  # a model directory with its tokenizer, as a user's SFT model is
    shutil.copytree(model_dir, model)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(model)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", explicit_rows(40))
    run = tmp_path / "run"
    configs = [arg for name in ("dpo_custom", *overlays) for arg in ("--config", ROOT / "configs" / f"{name}.yaml")]
    lit_align("fit", *configs, f"--model.policy.path={model}", f"--data.path={pairs}",
              f"--trainer.default_root_dir={run}", "--trainer.max_steps=2")
    return run


def saved_model(run: Path, model: Path) -> dict[str, torch.Tensor]:
    """The weights SaveHFModel wrote in the run's log directory, checked to load in bf16 and to have trained."""
    (written,) = run.rglob("hf_model")
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= {
        path.name for path in written.iterdir()}
    assert AutoModelForCausalLM.from_pretrained(written).dtype == torch.bfloat16  # SaveHFModel(dtype: bfloat16)
    trained = load_file(written / "model.safetensors")
    initial = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).state_dict()
    assert any(not torch.equal(trained[name], initial[name]) for name in trained)  # it trained
    return trained


def test_custom_config_runs_as_given_on_a_cpu_box(tmp_path, model_dir, tokenizer_dir):
    run = user_run(tmp_path, model_dir, tokenizer_dir)
    saved_model(run, tmp_path / "sft")
    (checkpoint,) = run.rglob("*.ckpt")
    assert checkpoint.is_file()  # one process, the default strategy: a single-file checkpoint


def test_custom_config_with_the_fsdp2_overlay_trains_and_exports(tmp_path, model_dir, tokenizer_dir):
    run = user_run(tmp_path, model_dir, tokenizer_dir, "overlays/fsdp2")
    trained = saved_model(run, tmp_path / "sft")
    (checkpoint,) = run.rglob("*.ckpt")
    assert checkpoint.is_dir()  # FSDP2's sharded checkpoint
    lit_align("export", f"--ckpt_path={checkpoint}", f"--output_dir={tmp_path / 'exported'}", "--dtype=bfloat16")
    exported = load_file(tmp_path / "exported" / "model.safetensors")
    assert exported.keys() == trained.keys()
    for name, value in trained.items():
        torch.testing.assert_close(exported[name], value, atol=0, rtol=0, msg=name)
    assert (tmp_path / "exported" / "tokenizer.json").is_file()
