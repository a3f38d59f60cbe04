"""Issue 18: a newcomer's first mistakes, each typed at the CLI as a user would, each ending in one line
``error: <key>=<value>: <expected>`` with a non-zero exit and no traceback (``--debug`` shows it); and the run's
outputs where a user looks (adapter, store, held-out count, checkpoints, metric tags, help)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import LlamaConfig, LlamaForCausalLM

from lit_align.cli import main
from lit_align.data import PreferenceDataModule
from lit_align.errors import ConfigError, find_config_error
from lit_align.models.policy import LoraSettings, PolicySpec, build_policy
from lit_align.module import AlignmentModule
from lit_align.objectives import DPO
from lit_align.objectives.functional import fdpo_loss
from lit_align.trainer import AlignmentTrainer
from tests.conftest import TINY_LLAMA

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import train_sae  # noqa: E402


@pytest.fixture
def config(tmp_path, model_dir, tokenizer_dir, explicit_file) -> Path:
    """A hand-written DPO config over the tiny model and a small jsonl, as a newcomer writes it."""
    text = {
        "trainer": {"accelerator": "cpu", "max_steps": 2, "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path)},
        "model": {"objective": {"class_path": "lit_align.objectives.DPO"}, "policy": {"path": model_dir}},
        "data": {"class_path": "lit_align.data.PreferenceDataModule",
                 "init_args": {"path": str(explicit_file), "tokenizer": tokenizer_dir, "batch_size": 2,
                               "max_length": 64, "max_prompt_length": 32}},
    }
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(text))
    return path


def user_error(capsys, *args: str, status: int = 2) -> str:
    """Run ``lit-align fit --config ... <args>``; return its one stderr line after checking exit status and no
    traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == status, err
    assert "Traceback" not in err and "File \"" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def small_vocab_model(tmp_path_factory) -> str:
    """The tiny Llama with 100 embedding rows: fewer than the test tokenizer's 512 tokens."""
    config = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    target = tmp_path_factory.mktemp("small_vocab")
    LlamaForCausalLM(LlamaConfig(vocab_size=100, pad_token_id=0, eos_token_id=2, **config)).save_pretrained(target)
    return str(target)


# ---- paths --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--model.policy.path={tmp}/no_model", r"model\.policy\.path='[^']*no_model': not a local path .* hub id"),
        ("--model.policy.path=null", r"model\.policy\.path=None: set exactly one of model\.policy\.path .* neither"),
        ("--data.path=nope.jsonl", r"data\.path='nope\.jsonl': not a local path \(looked for .*nope\.jsonl\), and "
                                   r"not a hub id"),
        ("--data.val_path=runs/nope/val.jsonl", r"data\.val_path='runs/nope/val\.jsonl': not a local path"),
        ("--data.tokenizer={tmp}/tokenzier", r"data\.tokenizer='[^']*tokenzier': not a local path"),
        ("--ckpt_path={tmp}/last.ckpt", r"ckpt_path='[^']*last\.ckpt': no such file or directory"),
    ],
)
def test_a_path_that_is_neither_local_nor_a_hub_id_is_one_line(capsys, config, tmp_path, override, expected):
    line = user_error(capsys, "--config", str(config), override.format(tmp=tmp_path))
    assert re.fullmatch(rf"error: {expected}.*", line), line


def test_a_model_directory_without_config_json_is_one_line(capsys, config, tmp_path, tokenizer_dir):
    line = user_error(capsys, "--config", str(config), f"--model.policy.path={tokenizer_dir}")
    assert line.startswith(f"error: model.policy.path='{tokenizer_dir}': a model directory needs config.json")
    assert "tokenizer.json" in line  # what it holds instead


def test_a_lora_target_the_model_lacks_names_its_linear_modules(capsys, config):
    line = user_error(capsys, "--config", str(config), "--model.policy.lora.target_modules=[q_proj, query_key_value]")
    assert line == ("error: model.policy.lora.target_modules=['q_proj', 'query_key_value']: ['query_key_value'] match "
                    "no module of this llama model; its linear modules are ['down_proj', 'gate_proj', 'k_proj', "
                    "'lm_head', 'o_proj', 'q_proj', 'up_proj', 'v_proj'] (or use all-linear)")


def test_a_gpu_asked_for_on_a_cpu_box_says_what_the_machine_has(capsys, config):
    line = user_error(capsys, "--config", str(config), "--trainer.accelerator=gpu")
    assert line.startswith("error: trainer.accelerator/devices/strategy: No supported gpu backend found!"), line
    assert f"this machine: {os.cpu_count()} CPU cores, no CUDA GPUs" in line and "--trainer.accelerator=auto" in line


def test_fsdp2_mixed_precision_under_another_strategy_names_the_key_to_set(capsys, config):
    line = user_error(capsys, "--config", str(config), "--model.mixed_precision.param_dtype=bfloat16")
    assert line.startswith("error: model.mixed_precision=FSDPMixedPrecision(") and "not SingleDeviceStrategy's" in line
    assert "set --model.mixed_precision=null (mixed precision: --trainer.precision=bf16-mixed)" in line


def test_offline_hub_id_missing_from_the_cache_is_refused_without_retries(capsys, config, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    line = user_error(capsys, "--config", str(config), "--data.path=someone/some-pairs")
    assert "data.path='someone/some-pairs': not a local path" in line and "HF_HUB_OFFLINE is set" in line


def test_a_missing_store_is_named_before_training(capsys, config, tmp_path):
    line = user_error(capsys, "--config", str(config), "--model.reference=lit_align.reference.OfflineStore",
                      f"--model.reference.path={tmp_path / 'store'}")
    assert line.startswith(f"error: model.reference.path='{tmp_path / 'store'}': no reference store there")
    assert "lit-align precompute" in line


def test_an_sae_path_that_does_not_exist(capsys, config, tmp_path):
    line = user_error(capsys, "--config", str(config), "--model.objective=lit_align.objectives.FPO",
                      f"--model.objective.sae_path={tmp_path / 'sae'}")
    assert line.startswith(f"error: model.objective.sae_path='{tmp_path / 'sae'}': no such file or directory")


def test_a_tokenizer_larger_than_the_embedding_fails_before_the_first_step(capsys, config, small_vocab_model):
    line = user_error(capsys, "--config", str(config), f"--model.policy.path={small_vocab_model}")
    assert re.fullmatch(r"error: data\.tokenizer='[^']+': the tokenizer has 512 tokens but the policy's embedding "
                        r"only 100 rows; .*", line), line


# ---- settings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--data.val_fraction=1.0", r"data\.val_fraction=1\.0: expected a HoldOutFraction \(v>=0 and v<1\)"),
        ("--data.max_prompt_length=100", r"data\.max_prompt_length=100: need 0 < max_prompt_length < max_length, "
                                         r"got max_length=64"),
        ("--data.batch_size=0", r"data\.batch_size=0: expected a PositiveInt \(v>0\)"),
        ("--data.eval_batch_size=0", r"data\.eval_batch_size=0: expected a PositiveInt \(v>0\)"),
        ("--data.truncation_mode=keep_middle", r"data\.truncation_mode=keep_middle: expected one of "
                                               r"\['keep_end', 'keep_start', 'drop'\]"),
        ("--model.logits_chunk_size=0", r"model\.logits_chunk_size=0: expected a PositiveInt \(v>0\)"),
        ("--model.policy.lora.r=0", r"model\.policy\.lora\.r=0: expected a PositiveInt \(v>0\)"),
        ("--model.policy.dtype=fp16", r"model\.policy\.dtype=fp16: expected one of \['float32', 'bfloat16', "
                                      r"'float16'\]"),
        ("--model.objective.beta=-1", r"model\.objective\.beta=-1: expected a PositiveFloat \(v>0\)"),
        ("--trainer.max_steps=ten", r"trainer\.max_steps=ten: expected int"),
    ],
)
def test_a_wrong_setting_is_one_line_naming_key_value_and_expectation(capsys, config, override, expected):
    line = user_error(capsys, "--config", str(config), override)
    assert re.fullmatch(rf"error: {expected}", line), line


def test_the_reliability_docs_parse_time_cases_through_the_cli(capsys, config):
    for objective, override, key in [("FDPO", "divergence=hellinger", "divergence"), ("FDPO", "alpha=1.5", "alpha"),
                                     ("TDPO", "beta=0", "beta"), ("FPO", "top_k=0", "top_k")]:
        line = user_error(capsys, "--config", str(config), f"--model.objective=lit_align.objectives.{objective}",
                          f"--model.objective.{override}", "--print_config")
        assert line.startswith(f"error: model.objective.{key}={override.split('=')[1]}: expected"), line


def test_python_checks_are_config_errors_naming_the_key(tokenizer_dir, explicit_file):
    for kwargs, key in [({"batch_size": 0}, "data.batch_size"), ({"eval_batch_size": 0}, "data.eval_batch_size"),
                        ({"val_fraction": 1.0}, "data.val_fraction"),
                        ({"max_prompt_length": 600}, "data.max_prompt_length")]:
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=") as info:
            PreferenceDataModule(str(explicit_file), tokenizer_dir, **kwargs)
        assert info.value.key == key
    with pytest.raises(ConfigError, match=r"^model\.logits_chunk_size=0: "):
        AlignmentModule(DPO(), PolicySpec(config=dict(TINY_LLAMA)), logits_chunk_size=0)
    with pytest.raises(ConfigError, match=r"^model\.policy\.lora\.r=0: "):
        LoraSettings(r=0)
    logps = torch.zeros(2)
    with pytest.raises(ConfigError, match=r"^beta=-1: beta must be > 0"):
        fdpo_loss(logps, logps, logps, logps, divergence="js", beta=-1)
    with pytest.raises(ConfigError, match=r"^beta=-1: beta must be > 0"):
        DPO(beta=-1)


# ---- --debug and the process as a user runs it --------------------------------------------------------------


def test_debug_shows_the_traceback(config):
    with pytest.raises(ValueError) as info:  # as jsonargparse wrapped it: nothing is hidden
        main(["fit", "--config", str(config), "--data.max_prompt_length=100", "--debug"])
    assert str(find_config_error(info.value)).startswith("data.max_prompt_length=100: need")


def test_the_console_script_exits_2_with_one_line_and_no_traceback(config):
    override = "--data.max_prompt_length=100"  # raised while jsonargparse instantiates: was 74 lines
    result = subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config", str(config), override],
                            capture_output=True, text=True, timeout=120, check=False, cwd=config.parent)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: {override[2:].split('=')[0]}=")


def test_bad_data_lit_align_refuses_is_one_line_with_exit_1(capsys, config, tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"prompt": "Q", "chosen"\n')
    line = user_error(capsys, "--config", str(config), f"--data.path={tmp_path / 'broken.jsonl'}", status=1)
    assert line.startswith(f"error: could not read preference data from '{tmp_path / 'broken.jsonl'}'")


# ---- outputs where a user looks -----------------------------------------------------------------------------


def test_lora_run_from_relative_paths_writes_an_adapter_that_merges_from_elsewhere(
    capsys, caplog, tmp_path, monkeypatch, model_dir, tokenizer_dir, explicit_file
):
    work = tmp_path / "work"
    work.mkdir()
    (work / "base").symlink_to(model_dir)
    (work / "tok").symlink_to(tokenizer_dir)
    (work / "pairs.jsonl").write_text(explicit_file.read_text())
    monkeypatch.chdir(work)
    caplog.set_level("INFO")
    main(["fit", "--trainer.accelerator=cpu", "--trainer.max_steps=2", "--trainer.log_every_n_steps=1",
          "--trainer.default_root_dir=run", "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
          "--trainer.logger.save_dir=run", "--trainer.callbacks+=lit_align.callbacks.SaveHFModel",
          "--model.objective=lit_align.objectives.DPO", "--model.policy.path=base",
          '--model.policy.lora={"r": 4, "alpha": 8}', "--data=lit_align.data.PreferenceDataModule",
          "--data.path=pairs.jsonl", "--data.tokenizer=tok", "--data.batch_size=2", "--data.max_length=64",
          "--data.max_prompt_length=32", "--data.val_fraction=0.25"])
    adapter = work / "run" / "lightning_logs" / "version_0" / "hf_model"
    assert f"adapter written to {adapter}" in caplog.text
    assert "validation: held out 6 pairs (val_fraction=0.25 of the kept train pairs); training on 18" in caplog.text
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str((work / "base").resolve())
    header = (adapter.parent / "metrics.csv").read_text().splitlines()[0].split(",")
    readme = (ROOT / "README.md").read_text()
    for tag in ("train/loss_step", "train/loss_epoch", "train/rewards/accuracies_epoch"):
        assert tag in header and tag in readme
    monkeypatch.chdir(tmp_path)
    # the checkpoint keeps the paths as typed ("base", "tok"); the adapter's directory names its base absolutely
    # and holds the run's tokenizer, so the merge works from anywhere
    [checkpoint] = (adapter.parent / "checkpoints").glob("*.ckpt")
    main(["export", f"--ckpt_path={checkpoint}", "--output_dir=merged", "--merge=true",
          f'--policy={{"path": "{base}"}}', f"--tokenizer={adapter}"])
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_precompute_says_where_and_how_many_and_a_store_of_other_lengths_names_both(capsys, caplog, config, tmp_path):
    store = tmp_path / "store"
    args = ["--config", str(config), "--model.reference=lit_align.reference.OfflineStore",
            f"--model.reference.path={store}", "--data.val_fraction=0"]
    caplog.set_level("INFO")
    main(["precompute", *args, "--trainer.logger=true"])
    assert f"reference store written to {store / 'reference.safetensors'}: 24 pairs" in caplog.text
    assert not (tmp_path / "lightning_logs").exists()
    line = user_error(capsys, *args, "--data.max_length=80")
    assert line == (f"error: model.reference.path='{store}': the store was built for another lengths than this run "
                    "uses; lengths: [64, 32, 'keep_end'] in the store, [80, 32, 'keep_end'] in this run; rebuild it "
                    "with `lit-align precompute`")


def test_an_exact_mid_epoch_resume_does_not_warn_that_the_loader_is_not_resumable(tmp_path, model_dir, tokenizer_dir,
                                                                                 explicit_file):
    def run(max_steps: int, ckpt_path: str | None = None) -> list[str]:
        data = PreferenceDataModule(str(explicit_file), tokenizer_dir, batch_size=2, max_length=64,
                                    max_prompt_length=32, val_fraction=0)
        module = AlignmentModule(DPO(), PolicySpec(path=model_dir))
        trainer = AlignmentTrainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                                   enable_model_summary=False, default_root_dir=tmp_path,
                                   callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_last=True)])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return [str(warning.message) for warning in caught]

    run(2)
    messages = run(4, "last")  # as the shipped configs resume: their checkpoints have a fixed dirpath
    assert not [message for message in messages if "not resumable" in message or "no last checkpoint" in message]


def test_shipped_configs_checkpoint_every_n_steps_with_save_last():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        callbacks = yaml.safe_load(path.read_text())["trainer"].get("callbacks", [])
        checkpoints = [c for c in callbacks if c["class_path"].endswith("ModelCheckpoint")]
        assert checkpoints, path.name
        settings = checkpoints[0]["init_args"]
        assert settings["save_last"] and settings["every_n_train_steps"] > 0, path.name


def test_ckpt_path_last_resumes_the_newest_last_checkpoint_of_the_run(caplog, config, tmp_path):
    args = ["fit", "--config", str(config), "--trainer.enable_checkpointing=true", "--trainer.logger=true",
            "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=1",
            "--trainer.callbacks.save_last=true", "--data.val_fraction=0"]
    main(args)
    caplog.set_level("INFO")
    main([*args, "--trainer.max_steps=3", "--ckpt_path=last"])
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert f"Restoring states from the checkpoint path at {last}" in caplog.text


def test_help_gives_whole_sentences(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "precompute Fill the offline reference store named by model.reference with every pair's reference " \
           "log-probs." in out


def test_train_sae_given_a_csv_names_the_file(capsys, tmp_path, model_dir):
    (tmp_path / "texts.csv").write_text("text\nhello\n")
    with pytest.raises(SystemExit) as exit_info:
        train_sae.parse_args(["--model", model_dir, "--data", str(tmp_path / "texts.csv"), "--layer", "0",
                              "--output", str(tmp_path / "sae")])
    assert exit_info.value.code == 2
    assert f"--data={tmp_path / 'texts.csv'}: expected a .jsonl or .jsonl.gz file" in capsys.readouterr().err
    (tmp_path / "texts.jsonl").write_text("text,label\nhello,1\n")
    from lit_align.sae.activations import read_texts

    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path / 'texts.jsonl'))}, line 1: not a JSON object"):
        read_texts(tmp_path / "texts.jsonl")


def test_a_class_path_in_a_config_is_not_imported_before_it_is_validated(tmp_path, config):
    """``model.class_path`` naming a local module: read as text to pick the CLI, so its code does not run."""
    (tmp_path / "evil.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nclass Model: pass\n")
    settings = yaml.safe_load(config.read_text())
    settings["model"]["class_path"] = "evil.Model"
    config.write_text(yaml.safe_dump(settings))
    result = subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config", str(config)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("--model.objective=lit_align.objectives.DPOO", "did you mean lit_align.objectives.DPO?"),
        ("--model.reference=lit_align.reference.FrozenCopi", "did you mean lit_align.reference.FrozenCopy?"),
        ("--model.objectiv.beta=3", "unrecognized arguments: --model.objectiv.beta=3; did you mean "
                                    "--model.objective.beta?"),
        ("--data.batch_sise=3", "data: Option 'batch_sise' is not accepted; did you mean --data.batch_size?"),
        ("--model.objective.bta=3", "did you mean --model.objective.beta?"),
    ],
)
def test_a_misspelt_class_path_or_key_gets_did_you_mean(capsys, config, override, expected):
    assert user_error(capsys, "--config", str(config), override).endswith(expected)


def test_help_lists_every_subcommand_export_included(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out for name in ("fit", "validate", "test", "predict", "precompute"))
    assert "export: write a checkpoint's policy as a save_pretrained model (lit-align export --ckpt_path" in out


def test_lora_targets_peft_refuses_on_a_mamba_family_are_one_line(tmp_path):
    from tests.families import build_family

    build_family("falcon_h1").save_pretrained(tmp_path / "falcon")
    with pytest.raises(ConfigError, match=r"model\.policy\.lora\.target_modules='all-linear': peft refuses them on "
                                          r"this falcon_h1 model \(.*out_proj.*\); name the modules to adapt"):
        build_policy(PolicySpec(path=str(tmp_path / "falcon"), lora=LoraSettings()))
