"""Lightning's own distributed strategies on CPU with gloo, in real processes on 127.0.0.1: DDP equals one process
on the same global batch, FSDP2 (``ModelParallelStrategy``) trains, shards the reference, saves a sharded
checkpoint and resumes from it exactly, FSDP1/FSDP2 sharded checkpoints export (``lit-align export``) to the trained
weights and ``SaveHFModel`` gathers them under FSDP2, a simulated two-node run deals each node its own shard, and
the offline store is precomputed on two processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader
from transformers import AutoModelForCausalLM
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from lit_align.export import export_checkpoint
from lit_align.models.sharding import decoder_layer_classes
from tests.distributed_run import run

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 150  # seconds per launched run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def loopback_env(**extra: str) -> dict[str, str]:
    """The environment of a launched process: loopback only, one thread per process (two cores in all)."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK"):
        env.pop(name, None)
    return {**env, **extra}


def launch(spec: dict, out: Path) -> list[dict]:
    """Run ``tests/distributed_run.py`` with ``spec``; Lightning starts the other local processes."""
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "spec.json"
    spec_file.write_text(json.dumps({**spec, "out": str(out)}))
    result = subprocess.run([sys.executable, "-m", "tests.distributed_run", str(spec_file)], cwd=ROOT,
                            env=loopback_env(), capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return ranks(out)


def ranks(out: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(out.glob("rank*.json"))]


def global_losses(per_rank: list[dict]) -> list[float]:
    """Per-step loss over the global batch: the mean of the ranks' means (their batches are equal in size)."""
    return [sum(step) / len(step) for step in zip(*(rank["losses"] for rank in per_rank), strict=True)]


def assert_same_weights(first: Path, second: Path, atol: float = 1e-5) -> None:
    a, b = torch.load(first, weights_only=True), torch.load(second, weights_only=True)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


def assert_same_weights_as(directory: Path, policy: Path) -> None:
    """The ``save_pretrained`` model in ``directory`` holds the weights saved in ``policy``."""
    loaded = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).state_dict()
    trained = torch.load(policy, weights_only=True)
    assert loaded.keys() == trained.keys()
    for name, value in trained.items():
        torch.testing.assert_close(loaded[name], value, atol=0, rtol=0, msg=name)


@pytest.fixture(scope="module")
def common(tmp_path_factory, model_dir, tokenizer_dir) -> dict:
    data = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    from tests.conftest import explicit_rows, write_jsonl

    write_jsonl(data, explicit_rows())
    return {"model": model_dir, "tokenizer": tokenizer_dir, "data": str(data), "steps": 4, "lr": 1.0}


@pytest.fixture(scope="module")
def single(common, tmp_path_factory) -> Path:
    """One process, global batch 4, in this process."""
    out = tmp_path_factory.mktemp("single")
    run({**common, "strategy": "auto", "batch_size": 4, "out": str(out)})
    return out


def test_ddp_equals_one_process(common, single, tmp_path):
    per_rank = launch({**common, "strategy": "ddp", "devices": 2, "batch_size": 2}, tmp_path)
    (alone,) = ranks(single)
    assert [rank["world_size"] for rank in per_rank] == [2, 2]
    first, second = (rank["keys"] for rank in per_rank)
    for step, (one, a, b) in enumerate(zip(alone["keys"], first, second, strict=True)):
        assert sorted(one) == sorted(a + b) and not set(a) & set(b), f"step {step}: another global batch"
    torch.testing.assert_close(global_losses(per_rank), alone["losses"], atol=1e-5, rtol=0)
    assert alone["losses"][-1] < alone["losses"][0]
    assert_same_weights(tmp_path / "policy.pt", single / "policy.pt")


@pytest.mark.parametrize(("strategy", "prefix"), [("fsdp2", "state_dict"), ("fsdp", "model")])
def test_fsdp_trains_saves_sharded_and_resumes(common, single, tmp_path, strategy, prefix):
    """FSDP2 (``ModelParallelStrategy``) and FSDP1 (``FSDPStrategy``, see ``CPUFSDPStrategy``), with activation
    checkpointing and sharded checkpoints, as in ``configs/fsdp2.yaml`` and ``configs/fsdp.yaml``."""
    sharded = {**common, "strategy": strategy, "devices": 2, "batch_size": 2, "gradient_checkpointing": True}
    full = launch({**sharded, "save_every": 2, "save_hf": strategy == "fsdp2"}, tmp_path / "full")
    # FSDP2 shards the whole reference; FSDP1 all but its LM head (wrap_frozen_fsdp1)
    head = 512 * 32 / AutoModelForCausalLM.from_pretrained(common["model"]).num_parameters()
    share = 0.5 if strategy == "fsdp2" else 0.5 + head / 2
    for rank in full:
        assert rank["reference_share"] == pytest.approx(share, abs=0.01) and rank["reference_frozen"]
        assert not rank["reference_in_state_dict"] and not rank["optimizer_holds_reference"]
    # sharded like the policy, the reference still gives the one-process numbers, and so does the training
    torch.testing.assert_close(global_losses(full), ranks(single)[0]["losses"], atol=1e-5, rtol=0)
    assert_same_weights(tmp_path / "full" / "policy.pt", single / "policy.pt")

    checkpoint = tmp_path / "full" / "checkpoints" / "step=2.ckpt"
    assert checkpoint.is_dir() and len(list(checkpoint.glob("*.distcp"))) == 2  # one shard per process
    metadata = torch.load(checkpoint / "meta.pt", weights_only=False)
    assert "PreferenceDataModule" in metadata  # the training order's position
    saved = FileSystemReader(checkpoint).read_metadata().state_dict_metadata
    weights = [key for key in saved if key.startswith(f"{prefix}.")]
    assert weights and all(key.startswith(f"{prefix}.policy.") for key in weights)  # no reference

    # the sharded checkpoint of the last step, exported by one process, is the trained policy; so is what the
    # SaveHFModel callback gathered and wrote at the end of the FSDP2 run
    last = tmp_path / "full" / "checkpoints" / "step=4.ckpt"
    exported = export_checkpoint(str(last), str(tmp_path / "hf"), policy={"path": common["model"]})
    for directory in [exported] + ([tmp_path / "full" / "hf"] if strategy == "fsdp2" else []):
        assert_same_weights_as(directory, tmp_path / "full" / "policy.pt")

    resumed = launch({**sharded, "resume": str(checkpoint)}, tmp_path / "resumed")
    for whole, second in zip(full, resumed, strict=True):
        assert second["losses"] == whole["losses"][2:]
        assert second["keys"] == whole["keys"][2:]
    assert_same_weights(tmp_path / "resumed" / "policy.pt", tmp_path / "full" / "policy.pt", atol=0)

CONFIG = """
seed_everything: 0
trainer:
  accelerator: cpu
  max_steps: 2
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  limit_val_batches: 0
  num_sanity_val_steps: 0
  default_root_dir: {out}
model:
  objective: {{class_path: lit_align.objectives.FDPO}}
  policy: {{path: {model}}}
data:
  class_path: lit_align.data.PreferenceDataModule
  init_args: {{path: {data}, tokenizer: {tokenizer}, max_length: 64, max_prompt_length: 32, batch_size: 2,
               val_fraction: 0.25}}
"""


def cli_config(common: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    config = out / "config.yaml"
    config.write_text(CONFIG.format(out=out, **common))
    return config


def lit_align(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lit_align", *args], cwd=ROOT, env=env or loopback_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> None:
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    assert process.returncode == 0, output[-4000:]


def test_two_nodes_each_see_their_own_shard(common, tmp_path):
    """Two "nodes" of one process each, started by hand as a cluster scheduler would (MASTER_ADDR, MASTER_PORT,
    NODE_RANK, WORLD_SIZE, LOCAL_RANK), through the CLI."""
    config = cli_config(common, tmp_path)
    env = loopback_env(WORLD_SIZE="2", LOCAL_RANK="0")
    nodes = [
        lit_align("fit", "--config", str(config), "--trainer.strategy=ddp", "--trainer.num_nodes=2",
                  "--trainer.devices=1", "--trainer.callbacks+=tests.distributed_run.KeysToFile",
                  f"--trainer.callbacks.out={tmp_path}", **{**env, "NODE_RANK": str(node)})
        for node in (0, 1)
    ]
    for node in nodes:
        finish(node)
    first, second = ranks(tmp_path)
    assert [(r["global_rank"], r["node_rank"], r["world_size"]) for r in (first, second)] == [(0, 0, 2), (1, 1, 2)]
    seen = [{key for batch in rank["keys"] for key in batch} for rank in (first, second)]
    assert all(len(keys) == 4 for keys in seen) and not seen[0] & seen[1]
    assert seen[0] | seen[1] <= set(first["train_keys"])


def test_precompute_on_two_processes_writes_one_store(common, tmp_path):
    from lit_align.reference.store import read_store

    config = cli_config(common, tmp_path)
    stores = {}
    for name, processes in (("one", 1), ("two", 2)):
        store = tmp_path / name
        finish(lit_align("precompute", "--config", str(config), "--trainer.strategy=ddp",
                         f"--trainer.devices={processes}", "--model.reference=lit_align.reference.OfflineStore",
                         f"--model.reference.path={store}"))
        stores[name] = read_store(store)
    (one, one_fingerprint), (two, two_fingerprint) = stores["one"], stores["two"]
    assert two_fingerprint == one_fingerprint
    assert len(two["example_key"]) == len(set(two["example_key"].tolist())) == 24  # every pair once
    order = [two["example_key"].tolist().index(key) for key in one["example_key"].tolist()]
    for column, values in one.items():  # other batches, so other packed rows: fp32 rounding of summed log-probs
        torch.testing.assert_close(two[column][order], values, atol=1e-6, rtol=1e-6, msg=column)


def test_fsdp2_lora_against_the_disabled_adapter(common, tmp_path):
    """LoRA under FSDP2: the reference is the sharded policy itself with its adapter disabled; the numbers are
    the one-process numbers, and the adapter is gathered and written alone."""
    lora = {**common, "lora": True, "lr": 0.5}
    run({**lora, "strategy": "auto", "batch_size": 4, "out": str(tmp_path / "single")})
    sharded = launch({**lora, "strategy": "fsdp2", "devices": 2, "batch_size": 2}, tmp_path / "fsdp2")
    (alone,) = ranks(tmp_path / "single")
    torch.testing.assert_close(global_losses(sharded), alone["losses"], atol=1e-5, rtol=0)
    assert alone["losses"][-1] < alone["losses"][0]
    assert_same_weights(tmp_path / "fsdp2" / "policy.pt", tmp_path / "single" / "policy.pt")
    single, fsdp2 = (load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ("single", "fsdp2"))
    assert single.keys() == fsdp2.keys() and all("lora_" in name for name in single)
    for name, value in single.items():
        torch.testing.assert_close(fsdp2[name], value, atol=1e-5, rtol=0, msg=name)


def shipped_strategy(name: str):
    """The ``trainer.strategy`` of ``configs/{name}.yaml``, built as LightningCLI builds it, and the config."""
    config = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy)
    return parser.instantiate(parser.parse_object({"strategy": config["trainer"]["strategy"]})).strategy, config


def test_fsdp_config_is_lightnings_fsdp_strategy_as_issued(model_dir):
    strategy, config = shipped_strategy("fsdp")
    assert type(strategy) is FSDPStrategy and config["trainer"]["precision"] == "bf16-mixed"
    wrap, checkpointing = strategy.kwargs["auto_wrap_policy"], strategy._activation_checkpointing_kwargs
    assert wrap._module_classes == checkpointing["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer}
    assert strategy.sharding_strategy.name == "FULL_SHARD" and strategy._state_dict_type == "sharded"
    # the class named is the model's own decoder layer, the unit lit_align.models.sharding uses too
    assert decoder_layer_classes(AutoModelForCausalLM.from_pretrained(model_dir)) == {"LlamaDecoderLayer"}


def test_fsdp2_config_runs_on_two_cpu_processes(common, tmp_path):
    """``configs/fsdp2.yaml`` itself through the CLI, with only the GPU-specific settings overridden."""
    strategy, config = shipped_strategy("fsdp2")
    assert type(strategy) is ModelParallelStrategy and strategy._tensor_parallel_size == 1
    assert strategy._data_parallel_size == config["trainer"]["num_nodes"] * config["trainer"]["devices"]
    finish(lit_align(
        "fit", "--config", str(ROOT / "configs" / "fsdp2.yaml"), "--trainer.accelerator=cpu", "--trainer.devices=2",
        "--trainer.precision=32-true", "--trainer.strategy.init_args.data_parallel_size=2",
        "--trainer.accumulate_grad_batches=1", "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={tmp_path}", f"--model.policy.path={common['model']}",
        f"--data.path={common['data']}", "--data.row_format=auto", f"--data.tokenizer={common['tokenizer']}",
        "--data.max_length=64", "--data.max_prompt_length=32",
    ))
    (checkpoint,) = tmp_path.rglob("last.ckpt")  # one epoch: 22 training pairs, 2 per process and step
    assert torch.load(checkpoint / "meta.pt", weights_only=False)["global_step"] == 6
    assert len(list(checkpoint.glob("*.distcp"))) == 2
