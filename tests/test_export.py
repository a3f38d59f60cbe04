"""``lit-align export`` and ``SaveHFModel``: a trained policy leaves as a ``save_pretrained`` directory that
``AutoModelForCausalLM.from_pretrained`` loads with the trained logits — from a checkpoint file, from a LoRA run
(adapter alone, or merged), in another dtype, and at the end of ``fit``. (Sharded FSDP1/FSDP2 checkpoints:
``tests/test_distributed.py``; a checkpoint written by the CLI: ``tests/test_custom_config.py``.)"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_align.callbacks import SaveHFModel
from lit_align.export import export_checkpoint
from lit_align.models.policy import LoraSettings, PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO
from tests.test_module import adam, make_data, make_trainer

LORA = {"r": 4, "alpha": 8}


def train(tmp_path, model_dir, tokenizer_dir, explicit_file, lora: bool = False, callbacks=()):
    spec = PolicySpec(path=model_dir, lora=LoraSettings(**LORA) if lora else None)
    module = AlignmentModule(FDPO(), spec, optimizer=adam(1e-2))
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.0)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    make_trainer(tmp_path, 3, callbacks=[checkpoint, *callbacks], enable_checkpointing=True,
                 limit_val_batches=0).fit(module, data)
    batch = next(iter(data.train_dataloader()))
    return module, tmp_path / "ckpt" / "last.ckpt", batch


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def assert_same_function(directory, module, batch, atol=1e-6) -> None:
    loaded = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    torch.testing.assert_close(logits(loaded, batch), logits(module.policy, batch), atol=atol, rtol=0)


def test_full_fine_tune_exports_a_loadable_model(tmp_path, model_dir, tokenizer_dir, explicit_file):
    module, ckpt, batch = train(tmp_path, model_dir, tokenizer_dir, explicit_file)
    out = export_checkpoint(str(ckpt), str(tmp_path / "hf"), policy={"path": model_dir}, tokenizer=tokenizer_dir)
    names = {path.name for path in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer_config.json"} <= names
    assert_same_function(out, module, batch)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    assert (logits(base, batch) - logits(module.policy, batch)).abs().max() > 1e-3  # training changed the model
    assert AutoTokenizer.from_pretrained(out)("hello").input_ids == AutoTokenizer.from_pretrained(tokenizer_dir)(
        "hello").input_ids

    half = export_checkpoint(str(ckpt), str(tmp_path / "bf16"), policy={"path": model_dir}, dtype="bfloat16")
    with safe_open(half / "model.safetensors", framework="pt") as saved:
        assert {saved.get_tensor(name).dtype for name in saved.keys()} == {torch.bfloat16}
    assert AutoModelForCausalLM.from_pretrained(half).dtype == torch.bfloat16


def test_lora_run_exports_its_adapter_or_the_merged_model(tmp_path, model_dir, tokenizer_dir, explicit_file):
    module, ckpt, batch = train(tmp_path, model_dir, tokenizer_dir, explicit_file, lora=True)
    policy = {"path": model_dir, "lora": LORA}
    adapter = export_checkpoint(str(ckpt), str(tmp_path / "adapter"), policy=policy)
    assert not (adapter / "model.safetensors").exists()
    with safe_open(adapter / "adapter_model.safetensors", framework="pt") as saved:
        assert saved.keys() and all("lora_" in name for name in saved.keys())
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(adapter))
    torch.testing.assert_close(logits(reloaded, batch), logits(module.policy, batch), atol=1e-6, rtol=0)

    merged = export_checkpoint(str(ckpt), str(tmp_path / "merged"), policy=policy, merge=True)
    assert_same_function(merged, module, batch)
    with pytest.raises(ValueError, match="no adapter"):
        export_checkpoint(str(ckpt), str(tmp_path / "x"), policy={"path": model_dir}, merge=True)


def test_export_needs_policy_settings_it_cannot_find(tmp_path, model_dir, tokenizer_dir, explicit_file):
    with pytest.raises(ValueError, match="no checkpoint there"):
        export_checkpoint(str(tmp_path / "missing.ckpt"), str(tmp_path / "hf"))
    _, ckpt, _ = train(tmp_path, model_dir, tokenizer_dir, explicit_file)
    with pytest.raises(ValueError, match="names no policy"):
        export_checkpoint(str(ckpt), str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="lacks"):  # the weights of a LoRA policy are not in this checkpoint
        export_checkpoint(str(ckpt), str(tmp_path / "hf"), policy={"path": model_dir, "lora": LORA})


def test_save_hf_model_writes_at_the_end_and_every_n_steps(tmp_path, model_dir, tokenizer_dir, explicit_file):
    saver = SaveHFModel(dirpath=str(tmp_path / "hf"), every_n_train_steps=2)
    module, _, batch = train(tmp_path, model_dir, tokenizer_dir, explicit_file, callbacks=[saver])
    assert_same_function(tmp_path / "hf", module, batch)
    assert (tmp_path / "hf" / "tokenizer_config.json").is_file()  # the data module's tokenizer
    assert (tmp_path / "hf" / "step-2" / "model.safetensors").is_file()
    assert not (tmp_path / "hf" / "step-1").exists()
