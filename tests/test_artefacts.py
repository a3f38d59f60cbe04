"""Nothing half-written (issue 23): one writer per offline store, a merge that is whole or absent and never
shrinks a store silently, files with the user's umask. Each fault is landed through the real CLI in a child
process on the tiny Llama."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from lit_align.reference.journal import PrecomputeJournal
from lit_align.reference.precompute import _merge
from lit_align.reference.store import read_store
from lit_align.reference.writer_lock import LOCK_FILE

ROOT = Path(__file__).resolve().parents[1]
PAIRS = 24


@pytest.fixture
def config(tmp_path, model_dir, tokenizer_dir, explicit_file) -> Path:
    text = {
        "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp_path)},
        "model": {"objective": {"class_path": "lit_align.objectives.DPO"}, "policy": {"path": model_dir},
                  "reference": {"class_path": "lit_align.reference.OfflineStore",
                                "init_args": {"path": str(tmp_path / "store")}}},
        "data": {"class_path": "lit_align.data.PreferenceDataModule",
                 "init_args": {"path": str(explicit_file), "tokenizer": tokenizer_dir, "batch_size": 2,
                               "max_length": 64, "max_prompt_length": 32, "val_fraction": 0}},
    }
    path = tmp_path / "dpo.yaml"
    path.write_text(yaml.safe_dump(text))
    return path


def precompute(config: Path, *args: str, module: str = "lit_align") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, "precompute", "--config", str(config), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: os.umask(0o022))


def finish(process: subprocess.Popen, status: int = 0) -> str:
    _, err = process.communicate(timeout=240)
    assert process.returncode == status, err
    return err


def wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_second_precompute_into_a_held_store_is_refused_naming_the_holder(config, tmp_path):
    first = precompute(config, "--trainer.callbacks+=tests.store_faults.PauseInPredict",
                       f"--trainer.callbacks.folder={tmp_path}")
    wait_for(tmp_path / "paused", first)
    second = finish(precompute(config), status=2)
    (tmp_path / "go").touch()
    finish(first)
    (line,) = [line for line in second.splitlines() if line.startswith("error:")]
    assert "another lit-align precompute is writing this store" in line
    assert f"process {first.pid} on {socket.gethostname()}" in line and "Traceback" not in second
    columns, _ = read_store(tmp_path / "store")
    assert columns["example_key"].numel() == PAIRS
    assert not (tmp_path / "store" / LOCK_FILE).exists()


def test_a_kill_inside_the_merge_keeps_the_old_store_and_the_next_run_takes_the_stale_lock_over(config, tmp_path):
    finish(precompute(config, "--data.max_length=80"))
    old, old_fingerprint = read_store(tmp_path / "store")
    killed = precompute(config, module="tests.store_faults")
    killed.communicate(timeout=240)
    assert killed.returncode == -9
    assert (tmp_path / "store" / LOCK_FILE).exists()  # left by the killed process
    kept, kept_fingerprint = read_store(tmp_path / "store")
    assert kept_fingerprint == old_fingerprint and all(torch.equal(kept[k], old[k]) for k in old)

    err = finish(precompute(config))
    assert f"taking over {tmp_path / 'store' / LOCK_FILE}: its holder (process {killed.pid}" in err
    assert f"{PAIRS} pairs (it replaced a store of {PAIRS} pairs)" in err
    new, new_fingerprint = read_store(tmp_path / "store")
    assert new_fingerprint["lengths"] != old_fingerprint["lengths"]
    assert not (tmp_path / "store" / LOCK_FILE).exists()
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["reference.safetensors"]


def test_a_lock_of_a_live_process_on_another_host_is_not_taken(config, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    holder = {"host": "gpu-node-7", "pid": 1, "process_start": 1, "since": "2026-12-06 10:00:00"}
    (store / LOCK_FILE).write_text(json.dumps(holder))
    err = finish(precompute(config), status=2)
    assert "(process 1 on gpu-node-7, since 2026-12-06 10:00:00)" in err and f"remove {store / LOCK_FILE}" in err
    assert not (store / "reference.safetensors").exists()


def test_stores_follow_the_umask_and_record_their_run(config, tmp_path):
    finish(precompute(config))
    store = tmp_path / "store" / "reference.safetensors"
    assert stat.S_IMODE(store.stat().st_mode) == 0o644
    with safe_open(str(store), framework="pt") as handle:
        manifest = json.loads(handle.metadata()["manifest"])
    assert manifest["model"]["objective"]["class_path"] == "lit_align.objectives.DPO"
    assert manifest["content"]["data.path"] and manifest["data"]["max_length"] == 64


def test_a_merge_that_lacks_pairs_writes_nothing(tmp_path):
    journal = PrecomputeJournal(tmp_path / "store")
    journal.start({"reference": "r"})
    columns = {"example_key": torch.tensor([1, 2]), "chosen_logps": torch.zeros(2), "rejected_logps": torch.zeros(2),
               "chosen_lengths": torch.ones(2), "rejected_lengths": torch.ones(2)}
    journal._buffer = [columns]
    journal.flush(0)
    with pytest.raises(ValueError, match="lacks 1 of the 3 pairs this run computed"):
        _merge(tmp_path / "store", journal, {1, 2, 3})
    assert not (tmp_path / "store" / "reference.safetensors").exists()
    assert list(journal.directory.glob("*.safetensors"))  # kept for the next run to resume from
