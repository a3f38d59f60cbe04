"""``configs/dpo_custom.yaml``, the one-file recipe for a user's own run, as shipped: only the paths and the
accelerator are overridden. It trains 2 steps on CPU (FSDP2 on one process, mixed precision, warmup + cosine),
writes the policy with ``SaveHFModel``, and ``lit-align export`` writes the same from its sharded checkpoint with
the settings read from the checkpoint alone."""

from __future__ import annotations

import shutil
import subprocess
import sys

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import explicit_rows, write_jsonl
from tests.test_distributed import ROOT, TIMEOUT, loopback_env


def lit_align(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "lit_align", *args], cwd=ROOT, env=loopback_env(),
                            capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr[-4000:]


def test_custom_config_trains_and_exports(tmp_path, model_dir, tokenizer_dir):
    model = tmp_path / "sft"  # a model directory with its tokenizer, as a user's SFT model is
    shutil.copytree(model_dir, model)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(model)
    pairs = write_jsonl(tmp_path / "pairs.jsonl", explicit_rows(40))
    run = tmp_path / "run"
    lit_align("fit", "--config", str(ROOT / "configs" / "dpo_custom.yaml"), f"--model.policy.path={model}",
              f"--data.path={pairs}", f"--trainer.default_root_dir={run}", "--trainer.accelerator=cpu",
              "--trainer.devices=1", "--trainer.max_steps=2")

    (written,) = run.rglob("hf_model")  # in the run's log directory
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= {
        path.name for path in written.iterdir()}
    assert AutoModelForCausalLM.from_pretrained(written).dtype == torch.bfloat16  # SaveHFModel(dtype: bfloat16)
    trained = load_file(written / "model.safetensors")
    initial = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).state_dict()
    assert any(not torch.equal(trained[name], initial[name]) for name in trained)  # it trained

    (checkpoint,) = run.rglob("*.ckpt")
    assert checkpoint.is_dir()  # FSDP2's sharded checkpoint
    lit_align("export", f"--ckpt_path={checkpoint}", f"--output_dir={tmp_path / 'exported'}", "--dtype=bfloat16")
    exported = load_file(tmp_path / "exported" / "model.safetensors")
    assert exported.keys() == trained.keys()
    for name, value in trained.items():
        torch.testing.assert_close(exported[name], value, atol=0, rtol=0, msg=name)
    assert (tmp_path / "exported" / "tokenizer.json").is_file()
