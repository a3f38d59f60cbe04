"""QLoRA (issue 26, item 1): a 4-bit NF4 (double-quantised) or 8-bit base read through bitsandbytes, prepared for
k-bit training, a LoRA adapter on top and the adapter-disabled reference on the same quantised base; resumed
exactly; exported as the adapter, or merged into the base read again in full precision. bitsandbytes runs 4-bit
and 8-bit on this CPU, so nothing here is skipped."""

from __future__ import annotations

from functools import partial

import bitsandbytes as bnb
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import PeftModel
from safetensors import safe_open
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from lit_align.errors import ConfigError
from lit_align.export import export_checkpoint
from lit_align.models.policy import LoraSettings, PolicySpec, Quantization, build_policy
from lit_align.models.quantization import without_cpu_repacking
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO
from lit_align.reference import DisabledAdapter
from tests.distributed_run import StepRecorder
from tests.test_module import make_data, make_trainer

LORA = LoraSettings(r=4, alpha=8)


def qlora_spec(model_dir: str, bits: int = 4) -> PolicySpec:
    return PolicySpec(path=model_dir, lora=LORA, quantization=Quantization(bits=bits))


def fit(root, model_dir, data, steps: int, resume=None, bits: int = 4) -> tuple[AlignmentModule, StepRecorder]:
    recorder = StepRecorder()
    saver = ModelCheckpoint(dirpath=root / "checkpoints", filename="{step}", every_n_train_steps=2, save_top_k=-1)
    module = AlignmentModule(FDPO(beta=0.5), qlora_spec(model_dir, bits), optimizer=partial(torch.optim.AdamW, lr=1e-2))
    trainer = make_trainer(root, steps, callbacks=[recorder, saver], enable_checkpointing=True, limit_val_batches=0)
    trainer.fit(module, data, ckpt_path=resume)
    return module, recorder


def response_logps(model, batch) -> torch.Tensor:
    """Σ log π(y_t | y_<t) over response tokens, straight from ``model(...).logits`` (padded layout)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    tokens = logits[:, :-1].log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return (tokens * batch["response_mask"][:, 1:]).sum(-1)


def quantised_base(model_dir: str) -> torch.nn.Module:
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    return without_cpu_repacking(AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=config)).eval()


def test_qlora_trains_on_a_4bit_base_whose_reference_is_that_base(tmp_path, model_dir, tokenizer_dir, explicit_file):
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.0)
    module, recorder = fit(tmp_path, model_dir, data, steps=3)
    assert isinstance(module.policy, PeftModel) and isinstance(module.reference, DisabledAdapter)
    layers = [m for m in module.policy.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.quant_state.quant_type == "nf4" and m.weight.quant_state.nested for m in layers)
    assert all(torch.isfinite(torch.tensor(recorder.losses)))
    batch = next(iter(data.train_dataloader()))
    padded = {name: batch[name] for name in ("input_ids", "attention_mask", "response_mask")}
    base = response_logps(quantised_base(model_dir), padded)
    module.eval()
    reference = module.reference.sequence_logps(padded).double()
    torch.testing.assert_close(reference, base, atol=1e-4, rtol=0)  # the reference is the 4-bit base itself
    policy = response_logps(module.policy, padded)
    assert (policy - base).abs().max() > 1e-3  # and the trained adapter moved the policy away from it


def test_qlora_resumes_exactly_and_exports_adapter_and_full_precision_merge(
    tmp_path, model_dir, tokenizer_dir, explicit_file
):
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.0)
    whole, whole_steps = fit(tmp_path / "whole", model_dir, data, steps=4)
    resumed, resumed_steps = fit(tmp_path / "resumed", model_dir, data, steps=4,
                                 resume=tmp_path / "whole" / "checkpoints" / "step=2.ckpt")
    assert resumed_steps.losses == whole_steps.losses[2:]
    for (name, trained), (_, again) in zip(whole.policy.named_parameters(), resumed.policy.named_parameters(),
                                           strict=True):
        if trained.requires_grad:
            assert torch.equal(trained, again), name

    checkpoint = tmp_path / "whole" / "checkpoints" / "step=4.ckpt"
    stored = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert stored and all("lora_" in name for name in stored)  # what trains; the 4-bit base is read from its files
    policy = {"path": model_dir, "lora": {"r": 4, "alpha": 8}, "quantization": {"bits": 4}}  # built in Python
    adapter = export_checkpoint(str(checkpoint), str(tmp_path / "adapter"), policy=policy)
    with safe_open(adapter / "adapter_model.safetensors", framework="pt") as saved:
        assert saved.keys() and all("lora_" in name for name in saved.keys())
    merged = export_checkpoint(str(checkpoint), str(tmp_path / "merged"), policy=policy, merge=True)
    loaded = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert all(parameter.dtype == torch.float32 for parameter in loaded.parameters())  # full precision, no 4-bit

    batch = next(iter(data.train_dataloader()))
    padded = {name: batch[name] for name in ("input_ids", "attention_mask", "response_mask")}
    full_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).eval()
    torch.testing.assert_close(response_logps(loaded, padded), response_logps(full_base, padded), atol=1e-5, rtol=0)
    quantised = response_logps(whole.policy.eval(), padded)
    assert (response_logps(loaded, padded) - quantised).abs().max() < 0.5  # the same adapter, off by NF4's error


def test_8bit_base_trains(tmp_path, model_dir, tokenizer_dir, explicit_file):
    module, recorder = fit(tmp_path, model_dir, make_data(explicit_file, tokenizer_dir, val_fraction=0.0), steps=2,
                           bits=8)
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in module.policy.modules())
    assert len(recorder.losses) == 2 and all(torch.isfinite(torch.tensor(recorder.losses)))


def test_quantisation_needs_an_adapter_and_a_path(model_dir):
    with pytest.raises(ConfigError, match="an adapter to train on the quantised base"):
        build_policy(PolicySpec(path=model_dir, quantization=Quantization()))
    with pytest.raises(ConfigError, match="a model read from model.policy.path"):
        PolicySpec(config={"model_type": "llama"}, lora=LORA, quantization=Quantization())


def test_qlora_under_fsdp2_is_refused_in_one_line(tmp_path, model_dir, tokenizer_dir, explicit_file):
    from lightning.pytorch.strategies import ModelParallelStrategy

    module = AlignmentModule(FDPO(), qlora_spec(model_dir))
    trainer = make_trainer(tmp_path, 1, strategy=ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1))
    with pytest.raises(ConfigError, match="model.policy.quantization=.*one process or DDP"):
        trainer.fit(module, make_data(explicit_file, tokenizer_dir, val_fraction=0.0))
