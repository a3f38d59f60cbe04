"""A TRL user's QLoRA DPO config through the real CLI: ``model.policy.quantization`` and a ``model.policy.peft``
given by ``class_path`` in YAML, ``lit-align fit``, then ``lit-align export`` reading every policy setting back from
the checkpoint (no ``--policy``), as the adapter and as a full-precision merged model."""

from __future__ import annotations

import json

import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lit_align.cli import main
from tests.test_qlora import response_logps


def test_qlora_with_a_dora_peft_config_fits_and_exports_from_the_cli(tmp_path, model_dir, tokenizer_dir,
                                                                      explicit_file):
    config = {
        "trainer": {"accelerator": "cpu", "max_steps": 3, "default_root_dir": str(tmp_path / "run"),
                    "logger": False, "enable_progress_bar": False, "limit_val_batches": 0},
        "model": {
            "objective": {"class_path": "lit_align.objectives.DPO", "init_args": {"beta": 0.5}},
            "policy": {"path": model_dir, "quantization": {"bits": 4, "compute_dtype": "float32"},
                       "peft": {"class_path": "peft.LoraConfig",
                                "init_args": {"r": 4, "lora_alpha": 8, "use_dora": True,
                                              "target_modules": "all-linear"}}},
            "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01, "weight_decay": 0.0}},
        },
        "data": {"class_path": "lit_align.data.PreferenceDataModule",
                 "init_args": {"path": str(explicit_file), "tokenizer": tokenizer_dir, "batch_size": 4,
                               "max_length": 64, "max_prompt_length": 32, "val_fraction": 0.0}},
    }
    path = tmp_path / "qlora.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["fit", "--config", str(path)])
    [checkpoint] = (tmp_path / "run").rglob("*.ckpt")
    stored = torch.load(checkpoint, weights_only=True)
    assert all("lora_" in name for name in stored["state_dict"])  # the 4-bit base is not in the checkpoint
    assert stored["hyper_parameters"]["policy"]["peft"]["init_args"]["use_dora"] is True

    main(["export", f"--ckpt_path={checkpoint}", f"--output_dir={tmp_path / 'adapter'}"])
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["use_dora"] is True and adapter_config["base_model_name_or_path"] == model_dir
    main(["export", f"--ckpt_path={checkpoint}", f"--output_dir={tmp_path / 'merged'}", "--merge=true"])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert all(parameter.dtype == torch.float32 for parameter in merged.parameters())

    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 2]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "response_mask": torch.ones_like(ids)}
    on_full_base = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "adapter")
    torch.testing.assert_close(response_logps(merged, batch), response_logps(on_full_base.eval(), batch),
                               atol=1e-5, rtol=0)
    base = response_logps(AutoModelForCausalLM.from_pretrained(model_dir).eval(), batch)
    assert (response_logps(merged, batch) - base).abs().max() > 1e-4  # the trained adapter is in it
