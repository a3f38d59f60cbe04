"""LoRA through peft: the adapter is written alone (``SaveHFModel``), merged into the base by ``lit-align export
--merge true``, and the merged model (``from_pretrained``) gives the trained policy's logits."""

from __future__ import annotations

import json
import subprocess
from functools import partial

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from lit_align.callbacks import SaveHFModel
from lit_align.models.policy import LoraSettings, PolicySpec, build_policy
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO
from tests.test_module import make_data, make_trainer


def test_adapter_saved_alone_merges_into_a_loadable_model(tmp_path, model_dir, tokenizer_dir, explicit_file):
    spec = PolicySpec(path=model_dir, lora=LoraSettings(r=4, alpha=8))
    module = AlignmentModule(FDPO(), spec, optimizer=partial(torch.optim.AdamW, lr=1e-2))
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.0)
    adapter = tmp_path / "adapter"
    trainer = make_trainer(tmp_path, 4, callbacks=[SaveHFModel(dirpath=str(adapter))], limit_val_batches=0)
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    assert {path.name for path in adapter.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    with safe_open(adapter / "adapter_model.safetensors", framework="pt") as saved:
        names = list(saved.keys())
    lora = [name for name, _ in module.policy.named_parameters() if "lora_" in name]
    assert names and all("lora_" in name for name in names) and len(names) == len(lora)  # the adapter, alone

    merged = tmp_path / "merged"
    policy = json.dumps({"path": model_dir, "lora": {"r": 4, "alpha": 8}})  # a module built in Python: given again
    result = subprocess.run(["lit-align", "export", "--ckpt_path", str(tmp_path / "last.ckpt"), "--output_dir",
                             str(merged), "--merge", "true", "--policy", policy],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert not any("lora" in name for name, _ in loaded.named_parameters())

    batch = next(iter(data.train_dataloader()))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        trained = module.policy.eval()(input_ids=ids, attention_mask=mask).logits
        base = AutoModelForCausalLM.from_pretrained(model_dir).eval()(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits, trained, atol=1e-5, rtol=0)
    assert (trained - base).abs().max() > 1e-3  # the adapter was trained: merging it changed the model


def test_merge_refuses_a_policy_without_lora(tmp_path, model_dir, tokenizer_dir, explicit_file):
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir))
    with pytest.raises(ValueError, match="the policy has none"):
        make_trainer(tmp_path, 1, callbacks=[SaveHFModel(merge=True)]).fit(
            module, make_data(explicit_file, tokenizer_dir, val_fraction=0.0))


def test_lora_initialisation_is_seeded(model_dir):
    """Every process of a sharded run, and every rebuild, starts from the same adapter (``PolicySpec.init_seed``)."""
    def adapter(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(torch.seed())  # whatever the global generator holds
        policy = build_policy(PolicySpec(path=model_dir, lora=LoraSettings(r=4, alpha=8), init_seed=seed))
        return {name: p.detach().clone() for name, p in policy.named_parameters() if "lora_A" in name}

    first, again, other = adapter(0), adapter(0), adapter(1)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)
