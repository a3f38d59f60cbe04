"""A run keeps its identity (issue 22): resume compares before it restores, ``last`` is this run's last,
checkpoints are verified, and the processes of one run agree. Every case runs ``lit-align fit`` in a child
process on a tiny model (a Llama; a Qwen2 where the family matters)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from transformers import Qwen2Config, Qwen2ForCausalLM

from tests.conftest import explicit_rows, write_jsonl
from tests.test_distributed import ROOT, TIMEOUT, loopback_env


@pytest.fixture
def config(tmp_path, model_dir, tokenizer_dir, explicit_file) -> Path:
    """A DPO run of 4 steps checkpointing every 2 steps with ``save_last`` into ``tmp_path/run``."""
    text = {
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 4, "logger": False,
                    "enable_progress_bar": False, "enable_model_summary": False, "limit_val_batches": 0,
                    "default_root_dir": str(tmp_path / "run"),
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"every_n_train_steps": 2, "save_last": True, "save_top_k": -1}}]},
        "model": {"objective": {"class_path": "lit_align.objectives.DPO", "init_args": {"beta": 0.1}},
                  "policy": {"path": model_dir},
                  "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 1e-3}}},
        "data": {"class_path": "lit_align.data.PreferenceDataModule",
                 "init_args": {"path": str(explicit_file), "tokenizer": tokenizer_dir, "batch_size": 2,
                               "max_length": 64, "max_prompt_length": 32, "val_fraction": 0}},
    }
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(text))
    return path


def fit(config: Path, *args: str, status: int = 0, env: dict | None = None) -> str:
    result = subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config", str(config), *args], cwd=ROOT,
                            env=env or loopback_env(), capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == status, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    return result.stderr


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def step_of(checkpoint: Path) -> int:
    return torch.load(checkpoint, weights_only=True, map_location="cpu")["global_step"]


def restored_from(stderr: str) -> str | None:
    marker = "Restoring states from the checkpoint path at "
    return next((line.split(marker, 1)[1].strip() for line in stderr.splitlines() if marker in line), None)


# ---- resume compares before it restores -----------------------------------------------------------------------


def test_a_resume_that_changes_the_objective_is_refused_one_line_per_key(config, tmp_path):
    fit(config)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    changed = ["--model.objective=lit_align.objectives.FDPO", "--model.objective.divergence=js",
               "--model.optimizer.init_args.lr=5e-4"]
    err = fit(config, "--trainer.max_steps=6", f"--ckpt_path={last}", *changed, status=1)
    assert errors(err) == [
        "error: resume changes model.objective: DPO(beta=0.1) -> FDPO(alpha=0.5, beta=0.1, divergence='js')",
        "error: resume changes model.optimizer.lr: 0.001 -> 0.0005",
        f"error: to continue from {tmp_path / 'run' / 'checkpoints' / 'last.ckpt'} anyway, allow it with "
        "--trainer.resume_allows=[model.objective, model.optimizer.lr]",
    ]
    err = fit(config, "--trainer.max_steps=6", "--ckpt_path=last", *changed)  # last: this run's, and there is none
    assert f"the newest, {last} (step 4), differs in model.objective, model.optimizer.lr); starting fresh" in err
    assert restored_from(err) is None


def test_an_allowed_change_and_a_longer_run_resume_with_a_notice(config, tmp_path):
    fit(config)
    err = fit(config, "--trainer.max_steps=6", "--ckpt_path=last", "--model.optimizer.init_args.lr=5e-4",
              "--trainer.resume_allows=[model.optimizer.lr]")
    assert "resume: model.optimizer.lr: 0.001 -> 0.0005 (allowed)" in err
    assert "resume: trainer.max_steps: 4 -> 6 (does not alter a step)" in err
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert restored_from(err) == str(last) and step_of(last) == 6
    subprocess.run([sys.executable, "-m", "lit_align", "export", f"--ckpt_path={last}",
                    f"--output_dir={tmp_path / 'exported'}"], cwd=ROOT, env=loopback_env(), check=True,
                   capture_output=True, timeout=TIMEOUT)
    run = json.loads((tmp_path / "exported" / "lit_align_run.json").read_text())  # the export records its run
    assert run["model"]["optimizer"]["init_args"]["lr"] == 5e-4 and run["trainer"]["max_steps"] == 6


def test_turning_lora_on_at_resume_is_one_line(config, tmp_path):
    fit(config)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    err = fit(config, "--trainer.max_steps=6", f"--ckpt_path={last}", "--model.policy.lora.r=4", status=1)
    assert errors(err)[0] == "error: resume changes model.policy.lora: None -> {r: 4, alpha: 16, dropout: 0.0, " \
                             "target_modules: 'all-linear'}"


def test_another_data_file_under_the_same_path_is_another_run(config, explicit_file):
    fit(config)
    write_jsonl(explicit_file, list(reversed(explicit_rows())))  # same path, same pairs, other order
    err = fit(config, "--trainer.max_steps=6", f"--ckpt_path={Path(config).parent / 'run/checkpoints/last.ckpt'}",
              status=1)
    assert errors(err)[0].startswith("error: resume changes content.data.path: '")


def test_another_policy_is_another_run(config, tmp_path, model_dir, tokenizer_dir):
    fit(config)
    other = tmp_path / "qwen2"
    torch.manual_seed(1)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)).save_pretrained(other)
    err = fit(config, "--trainer.max_steps=6", "--ckpt_path=last", f"--model.policy.path={other}")
    assert "--ckpt_path=last: no checkpoint of this run under" in err and restored_from(err) is None


# ---- last means this run's last ---------------------------------------------------------------------------------


def test_two_runs_sharing_a_root_never_resume_each_other(config, tmp_path):
    fit(config)
    err = fit(config, "--ckpt_path=last", "--model.objective.beta=0.3", "--trainer.callbacks.dirpath="
              f"{tmp_path / 'run' / 'beta03'}")
    assert f"--ckpt_path=last: no checkpoint of this run under {tmp_path / 'run'} (3 of other runs or settings, " \
           "0 unreadable; the newest, " in err and "differs in model.objective.beta); starting fresh" in err
    assert restored_from(err) is None
    err = fit(config, "--ckpt_path=last", "--trainer.max_steps=6")  # the first run finds its own
    assert restored_from(err) == str(tmp_path / "run" / "checkpoints" / "last.ckpt")


def test_last_with_no_checkpoint_says_where_it_looked_and_starts_fresh(config, tmp_path):
    err = fit(config, "--ckpt_path=last")
    assert f"no checkpoint of this run under {tmp_path / 'run'} (0 of other runs or settings, 0 unreadable)" in err


# ---- checkpoints are verified ---------------------------------------------------------------------------------


def test_a_truncated_last_checkpoint_names_the_newest_intact_one(config, tmp_path):
    fit(config)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    err = fit(config, "--trainer.max_steps=6", f"--ckpt_path={last}", status=1)
    intact = tmp_path / "run" / "checkpoints" / "epoch=0-step=4.ckpt"
    (line,) = errors(err)
    assert line.startswith(f"error: the checkpoint {last} cannot be read (")
    assert line.endswith(f"the newest intact checkpoint of this run is {intact} (step 4): --ckpt_path={intact}")


def test_flipped_bytes_inside_a_weight_are_found(config, tmp_path):
    fit(config)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with zipfile.ZipFile(last) as archive:  # torch's zip keeps each tensor's bytes in its own stored entry
        largest = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda i: i.file_size)
    data = bytearray(last.read_bytes())
    header = largest.header_offset
    start = header + 30 + int.from_bytes(data[header + 26 : header + 28], "little") \
        + int.from_bytes(data[header + 28 : header + 30], "little") + largest.file_size // 2
    data[start : start + 16] = bytes(255 - b for b in data[start : start + 16])  # 16 flipped bytes in a weight
    last.write_bytes(bytes(data))
    err = fit(config, "--trainer.max_steps=6", "--ckpt_path=last", status=1)
    (line,) = errors(err)
    assert f"the checkpoint {last} is corrupted: its weights do not match their checksum" in line
    assert "the newest intact checkpoint of this run is" in line and "step=4.ckpt (step 4)" in line
    exported = subprocess.run([sys.executable, "-m", "lit_align", "export", f"--ckpt_path={last}",
                               f"--output_dir={tmp_path / 'exported'}"], cwd=ROOT, env=loopback_env(),
                              capture_output=True, text=True, timeout=TIMEOUT)
    assert exported.returncode == 1 and errors(exported.stderr) == [f"error: {line.removeprefix('error: ')}"
                                                                   .split("; the newest")[0]]
    assert not (tmp_path / "exported").exists()


def test_a_kill_inside_a_checkpoint_write_keeps_the_last_good_one(config, tmp_path):
    """``kill -9`` as the step-4 checkpoint is being written: step 2's ``last.ckpt`` stays whole and resumes."""
    fit(config, "--trainer.max_steps=2")
    code = ("import os, signal, torch, sys\n"
            "save = torch.save\n"
            "def dying(obj, f, *a, **k):\n"
            "    save(obj, f, *a, **k)\n"
            "    if obj.get('global_step') == 4: os.kill(os.getpid(), signal.SIGKILL)\n"
            "torch.save = dying\n"
            "from lit_align.cli import main\n"
            "main(sys.argv[1:])\n")
    killed = subprocess.run([sys.executable, "-c", code, "fit", "--config", str(config), "--ckpt_path=last"],
                            cwd=ROOT, env=loopback_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert killed.returncode == -signal.SIGKILL
    assert step_of(tmp_path / "run" / "checkpoints" / "last.ckpt") == 2
    err = fit(config, "--ckpt_path=last")
    assert restored_from(err) == str(tmp_path / "run" / "checkpoints" / "last.ckpt")


FSDP2 = ["--trainer.strategy=lightning.pytorch.strategies.ModelParallelStrategy",
         "--trainer.strategy.data_parallel_size=2", "--trainer.strategy.tensor_parallel_size=1",
         "--trainer.devices=2"]
KILL_AT_STEP_4_METADATA = (  # SIGKILL on the first process in last.ckpt's save at step 4 (after the step's own
    # checkpoint): once its shards are written, before its meta.pt
    "import os, signal, sys, torch\n"
    "save, seen = torch.save, []\n"
    "def dying(obj, f, *a, **k):\n"
    "    if isinstance(obj, dict) and obj.get('global_step') == 4:\n"
    "        seen.append(f)\n"
    "        if len(seen) == 2: os.kill(os.getpid(), signal.SIGKILL)\n"
    "    save(obj, f, *a, **k)\n"
    "torch.save = dying\n"
    "from lit_align.cli import main\n"
    "main(sys.argv[1:])\n")


def test_a_kill_inside_a_sharded_checkpoint_write_keeps_the_previous_one_whole(config, tmp_path):
    """FSDP2 on two gloo processes: killed after step 4's shards and before its metadata, ``last.ckpt`` is still
    step 2's, every shard included; the resume restores it and goes on."""
    fit(config, "--trainer.max_steps=2", *FSDP2)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = {path.name: path.read_bytes() for path in last.iterdir()}
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP_4_METADATA, "fit", "--config", str(config),
                             "--ckpt_path=last", *FSDP2], cwd=ROOT, env=loopback_env(), capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert killed.returncode != 0
    assert {path.name: path.read_bytes() for path in last.iterdir()} == before  # no step-4 shard beside step 2
    err = fit(config, "--ckpt_path=last", *FSDP2)
    assert restored_from(err) == str(last)
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == 4
    err = fit(config, f"--ckpt_path={last}", "--trainer.max_steps=6", "--trainer.strategy=auto",
              "--data.batch_size=4", status=1)  # one process, the same global batch
    assert errors(err) == [f"error: {last} is a sharded checkpoint (a directory of FSDP shards), which "
                           "SingleDeviceStrategy cannot read: resume it with the strategy that wrote it (e.g. --config "
                           "configs/overlays/fsdp2.yaml), or export it with lit-align export and start from the "
                           "exported model"]


# ---- all processes are one run ---------------------------------------------------------------------------------


def two_nodes(config: Path, per_node: list[list[str]], cwds: list[Path] | None = None
              ) -> list[subprocess.CompletedProcess]:
    """Two one-process "nodes" started by hand (gloo on loopback), each with its own extra arguments and folder."""
    env = loopback_env(WORLD_SIZE="2", LOCAL_RANK="0")
    cwds = cwds or [ROOT, ROOT]
    nodes = [subprocess.Popen([sys.executable, "-m", "lit_align", "fit", "--config", str(config),
                               "--trainer.strategy=ddp", "--trainer.num_nodes=2", *per_node[node]], cwd=cwds[node],
                              env={**env, "NODE_RANK": str(node)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for node in (0, 1)]
    results = []
    for node in nodes:
        out, err = node.communicate(timeout=TIMEOUT)
        results.append(subprocess.CompletedProcess(node.args, node.returncode, out, err))
    return results


def test_two_nodes_with_different_max_steps_are_refused_not_hung(config):
    results = two_nodes(config, [["--trainer.max_steps=4"], ["--trainer.max_steps=2"]])
    for result in results:
        assert result.returncode == 1, result.stderr[-3000:]
        assert "error: processes of one run differ from process 0: trainer.max_steps: 4 -> 2 on process 1" \
               in result.stderr.splitlines()


def test_two_nodes_reading_other_content_under_one_relative_path_are_refused(config, tmp_path):
    """Each "node" runs in its own folder with ``--data.path=pairs.jsonl``; the files hold other pairs."""
    folders = [tmp_path / "node0", tmp_path / "node1"]
    for folder, rows in zip(folders, (explicit_rows(24), explicit_rows(30)[6:]), strict=True):
        folder.mkdir()
        write_jsonl(folder / "pairs.jsonl", rows)
    results = two_nodes(config, [["--data.path=pairs.jsonl"]] * 2, cwds=folders)
    for result in results:
        assert result.returncode == 1, result.stderr[-3000:]
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: processes of one run")]
        assert any("content.data.path" in line and "on process 1" in line for line in lines), result.stderr[-3000:]


def test_a_resumed_run_keeps_logging_into_its_own_version_directory(config, tmp_path):
    """TensorBoard logs under ``lightning_logs/version_0``, checkpoints beside them; the resume writes there too."""
    settings = yaml.safe_load(config.read_text())
    settings["trainer"]["logger"] = True
    settings["trainer"]["callbacks"][0]["init_args"].pop("save_top_k")
    config.write_text(yaml.safe_dump(settings))
    fit(config)
    err = fit(config, "--trainer.max_steps=6", "--ckpt_path=last")
    logs = tmp_path / "run" / "lightning_logs"
    assert restored_from(err) == str(logs / "version_0" / "checkpoints" / "last.ckpt")
    assert sorted(path.name for path in logs.iterdir()) == ["version_0"]  # was: a new version_1
    assert len(list((logs / "version_0").glob("events.out.tfevents.*"))) == 2
