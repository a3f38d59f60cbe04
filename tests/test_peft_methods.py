"""Any peft method (issue 26, item 2): ``model.policy.peft`` takes any ``PeftConfig``. For each method below a real
fit with the adapter-disabled reference: that reference's log-probs equal the base model's own, the trained policy
moved away from it, a resume from mid-run repeats the uninterrupted run, and both exports (the adapter, and the
merged model) give the trained policy's log-probs. Methods whose adapter-disabled model is not the base (PiSSA,
OLoRA) get a frozen copy by default and a one-line refusal of ``DisabledAdapter``; AdaLoRA and virtual-token
methods are refused in one line."""

from __future__ import annotations

from functools import partial

import peft
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lit_align.errors import ConfigError
from lit_align.export import export_checkpoint, write_pretrained
from lit_align.models.policy import PolicySpec, build_policy
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO
from lit_align.reference import DisabledAdapter, FrozenCopy
from tests.distributed_run import StepRecorder
from tests.test_module import make_data, make_trainer
from tests.test_qlora import response_logps

QV = ["q_proj", "v_proj"]
METHODS = {
    "dora": lambda: peft.LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules="all-linear"),
    "rslora": lambda: peft.LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules="all-linear"),
    "lora-embeddings": lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=[*QV, "embed_tokens"]),
    "ia3": lambda: peft.IA3Config(),
    "loha": lambda: peft.LoHaConfig(r=4, target_modules=QV),
    "lokr": lambda: peft.LoKrConfig(r=4, target_modules=QV),
    "oft": lambda: peft.OFTConfig(r=0, oft_block_size=8, target_modules=QV),
    "vera": lambda: peft.VeraConfig(r=4, target_modules=QV),
    "boft": lambda: peft.BOFTConfig(boft_block_size=4, target_modules=QV),
}


def fit(root, spec, data, steps, resume=None) -> tuple[AlignmentModule, StepRecorder]:
    recorder = StepRecorder()
    saver = ModelCheckpoint(dirpath=root / "checkpoints", filename="{step}", every_n_train_steps=2, save_top_k=-1)
    module = AlignmentModule(FDPO(beta=0.5), spec, optimizer=partial(torch.optim.AdamW, lr=3e-2))
    trainer = make_trainer(root, steps, callbacks=[recorder, saver], enable_checkpointing=True, limit_val_batches=0)
    trainer.fit(module, data, ckpt_path=resume)
    return module, recorder


def padded_batch(data) -> dict[str, torch.Tensor]:
    batch = next(iter(data.train_dataloader()))
    return {name: batch[name] for name in ("input_ids", "attention_mask", "response_mask")}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_against_its_base_resumes_and_exports(method, tmp_path, model_dir, tokenizer_dir,
                                                             explicit_file):
    spec = PolicySpec(path=model_dir, peft=METHODS[method]())
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.0)
    whole, steps = fit(tmp_path / "whole", spec, data, 4)
    assert isinstance(whole.reference, DisabledAdapter)
    batch = padded_batch(data)
    base = response_logps(AutoModelForCausalLM.from_pretrained(model_dir).eval(), batch)
    torch.testing.assert_close(whole.reference.sequence_logps(batch).double(), base, atol=1e-5, rtol=0)
    policy = response_logps(whole.policy.eval(), batch)
    assert (policy - base).abs().max() > 1e-4, method  # trained away from the base

    resumed, resumed_steps = fit(tmp_path / "resumed", spec, data, 4,
                                 resume=tmp_path / "whole" / "checkpoints" / "step=2.ckpt")
    assert resumed_steps.losses == steps.losses[2:]
    torch.testing.assert_close(response_logps(resumed.policy.eval(), batch), policy, atol=0, rtol=0)

    checkpoint = str(tmp_path / "whole" / "checkpoints" / "step=4.ckpt")
    stored = {"path": model_dir, "peft": {"class_path": f"peft.{type(spec.peft).__name__}",
                                          "init_args": METHODS[method]().to_dict()}}  # as the CLI stores it
    stored["peft"]["init_args"] = {name: value for name, value in stored["peft"]["init_args"].items()
                                   if name not in ("peft_type", "revision", "base_model_name_or_path")}
    adapter = export_checkpoint(checkpoint, str(tmp_path / "adapter"), policy=stored)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter).eval()
    torch.testing.assert_close(response_logps(reloaded, batch), policy, atol=1e-5, rtol=0)
    merged = export_checkpoint(checkpoint, str(tmp_path / "merged"), policy=stored, merge=True)
    loaded = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert not any(isinstance(module, peft.tuners.tuners_utils.BaseTunerLayer) for module in loaded.modules())
    torch.testing.assert_close(response_logps(loaded, batch), policy, atol=1e-5, rtol=0)


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_base_changing_initialisations_take_a_frozen_copy(init, tmp_path, model_dir, tokenizer_dir, explicit_file):
    spec = PolicySpec(path=model_dir, peft=peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=init))
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.0)
    module, _ = fit(tmp_path, spec, data, 2)
    assert isinstance(module.reference, FrozenCopy)  # the default, as disabling the adapter is not the base
    batch = padded_batch(data)
    base = response_logps(AutoModelForCausalLM.from_pretrained(model_dir).eval(), batch)
    torch.testing.assert_close(module.reference.sequence_logps(batch).double(), base, atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match=f"init_lora_weights='{init}' moves the weights' principal part"):
        AlignmentModule(FDPO(), spec, reference=DisabledAdapter()).configure_model()
    with pytest.raises(ValueError, match="export it with merge"):
        write_pretrained(module.policy, tmp_path / "adapter", None)
    merged = write_pretrained(module.policy, tmp_path / "merged", None, merge=True)
    trained = response_logps(module.policy.eval(), batch)
    torch.testing.assert_close(response_logps(AutoModelForCausalLM.from_pretrained(merged), batch), trained,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("config, reason", [
    (peft.PromptTuningConfig(num_virtual_tokens=4), "virtual-token methods"),
    (peft.AdaLoraConfig(r=4, total_step=10), "AdaLoRA's rank budget"),
])
def test_methods_lit_align_cannot_train_are_refused_in_one_line(config, reason, model_dir):
    with pytest.raises(ConfigError, match=reason):
        build_policy(PolicySpec(path=model_dir, peft=config))


def test_one_adapter_setting_at_a_time(model_dir):
    with pytest.raises(ConfigError, match="not both"):
        PolicySpec(path=model_dir, lora={"r": 4}, peft=peft.LoraConfig())
