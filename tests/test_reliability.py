"""Issue 8, items 2, 4 and 5: configuration errors named at parse time, stores from another tokenizer, a resumable
precompute, atomic checkpoints, weights-only resume, no remote code unless asked for, no pickle written."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import tokenize
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from safetensors import safe_open
from transformers import AutoTokenizer

from lit_align.callbacks import PrecomputeJournal
from lit_align.cli import main
from lit_align.data import PreferenceDataModule
from lit_align.identity import DamagedCheckpoint
from lit_align.models.policy import PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO, FPO
from lit_align.reference import OfflineStore
from lit_align.reference.sparse import dense_rows
from lit_align.reference.store import read_store
from lit_align.sae import SparseAutoencoder, load_sae, save_gemma_scope, save_saelens
from tests.test_distributed import loopback_env
from tests.test_fpo_module import write_sae
from tests.test_module import adam, make_data, make_trainer

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
trainer:
  max_steps: 2
  accelerator: cpu
  devices: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  num_sanity_val_steps: 0
  limit_val_batches: 0
  default_root_dir: {root}
model:
  objective:
    class_path: lit_align.objectives.FDPO
  policy: {{path: {model}}}
data:
  class_path: lit_align.data.PreferenceDataModule
  init_args: {{path: {data}, tokenizer: {tokenizer}, max_length: 64, max_prompt_length: 32, batch_size: 4,
               val_fraction: 0.0}}
"""


@pytest.fixture
def config(tmp_path, model_dir, tokenizer_dir, explicit_file) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(root=tmp_path / "run", model=model_dir, data=explicit_file, tokenizer=tokenizer_dir))
    return str(path)


def cli(*args: str) -> None:
    main(list(args))


# ---- item 2: configuration errors -------------------------------------------------------------------------

OBJECTIVES = "lit_align.objectives"


@pytest.mark.parametrize(
    "objective, override, key",
    [
        ("FDPO", "divergence=hellinger", "divergence"),  # unknown divergence: the allowed values are listed
        ("FDPO", "alpha=1.5", "alpha"),
        ("FDPO", "alpha=0", "alpha"),
        ("FDPO", "beta=-0.1", "beta"),
        ("TDPO", "beta=-0.1", "beta"),
        ("SimPO", "beta=0", "beta"),
        ("FPO", "top_k=0", "top_k"),
        ("FPO", "alpha=-1", "alpha"),
    ],
)
def test_bad_values_fail_at_parse_time_naming_the_key(config, capsys, objective, override, key):
    extra = ["--model.objective.sae_path=unused"] if objective == "FPO" else []
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--config", config, f"--model.objective={OBJECTIVES}.{objective}", *extra,
            f"--model.objective.{override}", "--print_config")
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert re.fullmatch(rf"error: model\.objective\.{key}=[^\n]+: expected [^\n]+\n", error), error
    if key == "divergence":
        assert "reverse_kl" in error and "forward_kl" in error and "hellinger" in error


def test_the_guard_is_configured_in_trainer_callbacks(config, capsys):
    guard = ("--trainer.callbacks+=lit_align.callbacks.NonFiniteGuard", "--trainer.callbacks.max_consecutive")
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--config", config, guard[0], f"{guard[1]}=10", "--print_config")
    assert exit_info.value.code == 0 and "max_consecutive: 10" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        cli("fit", "--config", config, guard[0], f"{guard[1]}=0", "--print_config")
    assert exit_info.value.code == 2 and "max_consecutive=0: expected a PositiveInt" in capsys.readouterr().err


def test_token_level_objective_with_a_store_fails_before_loading_anything(config, tmp_path):
    with pytest.raises(ValueError, match=r"TDPO needs \['token_kl'\], which OfflineStore cannot provide.*"
                                         r"train this objective with an online reference"):
        cli("fit", "--debug", "--config", config, f"--model.objective={OBJECTIVES}.TDPO",
            "--model.reference=lit_align.reference.OfflineStore", f"--model.reference.path={tmp_path / 'none'}")


@pytest.mark.parametrize(
    "d_model, top_k, match",
    [
        (32, 65, r"FPO top_k=65 exceeds the width d_sae=64 of the SAE at .*; set top_k ≤ 64"),
        (16, 8, r"SAE width d_model=16 does not match the policy's hidden size 32"),
    ],
)
def test_sae_that_does_not_fit_fails_before_the_first_step(config, tmp_path, d_model, top_k, match):
    sae = write_sae(tmp_path / "sae", d_model=d_model)
    # the SAE is read when the policy is built (configure_model), before any training step
    with pytest.raises(ValueError, match=match):
        cli("fit", "--debug", "--config", config, f"--model.objective={OBJECTIVES}.FPO",
            f"--model.objective.sae_path={sae}", f"--model.objective.top_k={top_k}")


# ---- item 4: stores -----------------------------------------------------------------------------------------


def test_store_from_another_tokenizer_is_refused(tmp_path, model_dir, tokenizer_dir, explicit_file):
    store = tmp_path / "store"
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir), reference=OfflineStore(str(store)))
    make_trainer(tmp_path, 1).precompute(module, make_data(explicit_file, tokenizer_dir, val_fraction=0.25))
    other = AutoTokenizer.from_pretrained(tokenizer_dir)
    other.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # same ids for these rows
    other.save_pretrained(tmp_path / "other_tokenizer")
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir), reference=OfflineStore(str(store)))
    data = make_data(explicit_file, str(tmp_path / "other_tokenizer"), val_fraction=0.25)
    with pytest.raises(ValueError, match="was built for another tokenizer than this run uses; rebuild it"):
        make_trainer(tmp_path, 1).fit(module, data)


class Interrupted(Exception):
    pass


class InterruptAt(Callback):
    """Stops a predict run as it starts its ``batch``-th batch (0-based, over all dataloaders)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.seen = 0

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.seen == self.batch:
            raise Interrupted(f"stopped at batch {self.batch}")
        self.seen += 1


class PairCounter(Callback):
    """How many pairs the reference was run on."""

    def __init__(self) -> None:
        self.pairs = 0

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.pairs += len(batch["example_key"])


def precompute(root, store, objective, model_dir, data, callbacks=(), every_n_batches=16, **trainer_kwargs):
    counter = PairCounter()
    module = AlignmentModule(objective, PolicySpec(path=model_dir), reference=OfflineStore(str(store)))
    trainer = make_trainer(root, 1, callbacks=[*callbacks, counter], **trainer_kwargs)
    trainer.precompute(module, data, every_n_batches=every_n_batches)
    return counter


def assert_same_store(first: Path, second: Path) -> None:
    (a, fingerprint_a), (b, fingerprint_b) = read_store(first), read_store(second)
    assert fingerprint_a == fingerprint_b and a.keys() == b.keys()
    assert torch.equal(a["example_key"], b["example_key"])
    for name in ("chosen_lengths", "rejected_lengths"):
        assert torch.equal(a[name], b[name])
    for name in ("chosen_logps", "rejected_logps"):  # computed in other batches, so padded differently
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-5)
    for side in ("chosen", "rejected") if "chosen_feature_offsets" in a else ():
        rows = torch.arange(len(a["example_key"]))
        dense = [dense_rows(*(c[f"{side}_feature_{part}"] for part in ("offsets", "indices", "values")), rows, 64)
                 for c in (a, b)]
        torch.testing.assert_close(*dense, atol=1e-5, rtol=1e-5)


@pytest.fixture
def data(explicit_file, tokenizer_dir) -> PreferenceDataModule:
    """24 pairs: 18 train (batches of 4, 4, 4, 4, 2) and 6 validation (4, 2)."""
    return make_data(explicit_file, tokenizer_dir, val_fraction=0.25)


@pytest.fixture
def whole_store(tmp_path, model_dir, data) -> Path:
    """The store of an uninterrupted precompute."""
    precompute(tmp_path / "whole", tmp_path / "whole_store", FDPO(), model_dir, data)
    return tmp_path / "whole_store"


def test_interrupted_precompute_resumes_where_it_stopped(tmp_path, model_dir, data, whole_store):
    store = tmp_path / "store"
    with pytest.raises(Interrupted):
        precompute(tmp_path, store, FDPO(), model_dir, data, callbacks=[InterruptAt(3)])
    assert not (store / "reference.safetensors").exists()
    assert len(list((store / "partial").glob("*.safetensors"))) == 1  # the 3 finished batches, written on the way out
    resumed = precompute(tmp_path, store, FDPO(), model_dir, data)
    assert resumed.pairs == 24 - 3 * 4
    assert_same_store(store, whole_store)
    assert sorted(p.name for p in store.iterdir()) == ["reference.safetensors"]  # the journal is gone


def test_hard_killed_precompute_loses_at_most_one_shard(tmp_path, model_dir, data, whole_store, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setattr(PrecomputeJournal, "on_exception", lambda *args: None)  # a kill runs no handler
    with pytest.raises(Interrupted):
        precompute(tmp_path, store, FDPO(), model_dir, data, callbacks=[InterruptAt(5)], every_n_batches=2)
    assert len(list((store / "partial").glob("*.safetensors"))) == 2  # batches 0-1 and 2-3; batch 4 is lost
    monkeypatch.undo()
    assert precompute(tmp_path, store, FDPO(), model_dir, data).pairs == 24 - 4 * 4
    assert_same_store(store, whole_store)


def test_precompute_interrupted_after_its_last_batch_only_merges(tmp_path, model_dir, data, whole_store):
    store = tmp_path / "store"
    with pytest.raises(Interrupted):
        precompute(tmp_path, store, FDPO(), model_dir, data, callbacks=[FailAtEnd()])
    assert precompute(tmp_path, store, FDPO(), model_dir, data).pairs == 0
    assert_same_store(store, whole_store)


class FailAtEnd(Callback):
    def on_predict_end(self, trainer, pl_module) -> None:
        raise Interrupted("after the last batch")


def test_journal_of_another_model_or_unreadable_is_not_used(tmp_path, model_dir, data, whole_store):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(7)
    LlamaForCausalLM(LlamaConfig.from_pretrained(model_dir)).save_pretrained(tmp_path / "other")
    store = tmp_path / "store"
    with pytest.raises(Interrupted):
        precompute(tmp_path, store, FDPO(), str(tmp_path / "other"), data, callbacks=[InterruptAt(4)])
    (store / "partial" / "rank0-torn.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": ")
    assert precompute(tmp_path, store, FDPO(), model_dir, data).pairs == 24  # nothing reused
    assert_same_store(store, whole_store)
    assert not (store / "partial").exists()


def resume_on_two_processes(spec_file: str) -> None:
    """``python -m tests.test_reliability SPEC``: precompute on 2 processes; each writes how many pairs it ran."""
    spec = json.loads(Path(spec_file).read_text())
    data = PreferenceDataModule(path=spec["data"], tokenizer=spec["tokenizer"], max_length=64, max_prompt_length=32,
                                batch_size=4, val_fraction=0.25)
    out = Path(spec["out"])
    counter = precompute(out, spec["store"], FDPO(), spec["model"], data, devices=2, strategy="ddp")
    rank = int(os.environ.get("LOCAL_RANK", 0))
    (out / f"rank{rank}.json").write_text(json.dumps({"pairs": counter.pairs}))


def test_precompute_interrupted_on_one_process_resumes_on_two(tmp_path, model_dir, tokenizer_dir, explicit_file,
                                                                data, whole_store):
    store = tmp_path / "store"
    with pytest.raises(Interrupted):
        precompute(tmp_path, store, FDPO(), model_dir, data, callbacks=[InterruptAt(3)])
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": model_dir, "tokenizer": tokenizer_dir, "data": str(explicit_file),
                                "store": str(store), "out": str(tmp_path)}))
    result = subprocess.run([sys.executable, "-m", "tests.test_reliability", str(spec)], cwd=ROOT,
                            env=loopback_env(), capture_output=True, text=True, timeout=150, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    # both processes read the journal before either wrote, and split the 12 remaining pairs between them
    assert [json.loads(path.read_text())["pairs"] for path in sorted(tmp_path.glob("rank*.json"))] == [6, 6]
    assert_same_store(store, whole_store)
    assert sorted(p.name for p in store.iterdir()) == ["reference.safetensors"]


def test_resumed_store_keeps_the_sparse_sae_features(tmp_path, model_dir, data):
    sae = write_sae(tmp_path / "sae")
    whole = precompute(tmp_path, tmp_path / "whole", FPO(sae, top_k=16), model_dir, data)
    with pytest.raises(Interrupted):
        precompute(tmp_path, tmp_path / "store", FPO(sae, top_k=16), model_dir, data, callbacks=[InterruptAt(2)])
    resumed = precompute(tmp_path, tmp_path / "store", FPO(sae, top_k=16), model_dir, data)
    assert whole.pairs == 24 and resumed.pairs == 24 - 2 * 4
    assert "sae" in read_store(tmp_path / "store")[1]
    assert_same_store(tmp_path / "store", tmp_path / "whole")


# ---- item 4: checkpoints ------------------------------------------------------------------------------------


def fitted_trainer(tmp_path, model_dir, explicit_file, tokenizer_dir, steps=1, **kwargs):
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir), optimizer=adam(1e-3))
    trainer = make_trainer(tmp_path, steps, limit_val_batches=0, **kwargs)
    trainer.fit(module, make_data(explicit_file, tokenizer_dir, val_fraction=0.0))
    return trainer, module


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, model_dir, explicit_file, tokenizer_dir,
                                                            monkeypatch):
    trainer, _ = fitted_trainer(tmp_path, model_dir, explicit_file, tokenizer_dir)
    target = tmp_path / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(target)
    previous = target.read_bytes()
    written_to = []

    def crashing_save(obj, file, *args, **kwargs):
        written_to.append(Path(file.name))
        assert target.read_bytes() == previous  # never written in place
        file.write(previous[: len(previous) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint(target)
    monkeypatch.undo()
    assert written_to[0].parent == target.parent and written_to[0] != target  # a temporary file beside it
    assert target.read_bytes() == previous and list(target.parent.iterdir()) == [target]  # no half file left
    assert torch.load(target, weights_only=True)["global_step"] == 1


class Payload:
    """Runs code when unpickled: it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_resume_reads_checkpoints_weights_only(tmp_path, model_dir, explicit_file, tokenizer_dir, config,
                                              monkeypatch):
    saver = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    fitted_trainer(tmp_path, model_dir, explicit_file, tokenizer_dir, steps=2, callbacks=[saver],
                   enable_checkpointing=True)
    last = tmp_path / "checkpoints" / "last.ckpt"
    # a clean checkpoint resumes (the whole trainer state reads weights-only)
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir), optimizer=adam(1e-3))
    trainer = make_trainer(tmp_path, 3, limit_val_batches=0)
    trainer.fit(module, make_data(explicit_file, tokenizer_dir, val_fraction=0.0), ckpt_path=last)
    assert trainer.global_step == 3

    checkpoint = torch.load(last, weights_only=True)
    marker = tmp_path / "code_ran"
    checkpoint["loops"]["payload"] = Payload(marker)
    poisoned = tmp_path / "poisoned.ckpt"
    torch.save(checkpoint, poisoned)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's own default is off now, ours is not
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir), optimizer=adam(1e-3))
    with pytest.raises(DamagedCheckpoint, match="Weights only load failed") as refused:  # read before restoring
        make_trainer(tmp_path, 3, limit_val_batches=0).fit(module, make_data(explicit_file, tokenizer_dir),
                                                           ckpt_path=poisoned)
    assert isinstance(refused.value.__cause__.__cause__, pickle.UnpicklingError)
    with pytest.raises(SystemExit):  # one line: error: the checkpoint ... cannot be read (UnpicklingError: ...)
        cli("fit", "--config", config, f"--ckpt_path={poisoned}")
    assert not marker.exists()
    torch.load(poisoned, weights_only=False)  # the payload is real: full pickle runs it
    assert marker.exists()


# ---- item 5: safe loading and writing -----------------------------------------------------------------------

SOURCES = sorted([*(ROOT / "lit_align").rglob("*.py"), *(ROOT / "tools").glob("*.py")])


@pytest.mark.parametrize(
    "pattern, allowed",
    [
        (r"trust_remote_code\s*=\s*True", ()),
        (r"\bimport pickle\b|\bpickle\.", ()),
        (r"torch\.save\(", ("lit_align/checkpoint_io.py",)),  # Lightning checkpoints only, read weights-only
        (r"torch\.load\(", ("lit_align/identity/checkpoints.py",)),  # reads checkpoints (resume, export), weights-only
        (r"weights_only\s*=\s*False", ()),
        (r"allow_pickle\s*=\s*True", ()),
    ],
)
def test_no_remote_code_and_no_pickle_in_the_package(pattern, allowed):
    found = [f"{name}:{number}" for path in SOURCES if (name := str(path.relative_to(ROOT))) not in allowed
             for number, line in code_lines(path).items() if re.search(pattern, line)]
    assert not found, found


def code_lines(path: Path) -> dict[int, str]:
    """The code of each line of a Python file, without its comments and string literals (docstrings)."""
    lines: dict[int, str] = {}
    with path.open("rb") as handle:
        for token in tokenize.tokenize(handle.readline):
            if token.type not in (tokenize.COMMENT, tokenize.STRING, tokenize.ENCODING):
                lines[token.start[0]] = lines.get(token.start[0], "") + token.string
    return lines


def test_the_source_scan_sees_code():
    lines = code_lines(ROOT / "lit_align" / "models" / "loading.py")
    assert any("trust_remote_code=spec.trust_remote_code" in line for line in lines.values())


def test_remote_code_is_off_unless_configured():
    assert PolicySpec(path="x").trust_remote_code is False
    assert PreferenceDataModule("x.jsonl", "tokenizer").hparams.trust_remote_code is False


def plain_files(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` by kind; fails on anything pickled (Lightning ``.ckpt`` files aside, which
    are torch's zip format and must read weights-only)."""
    kinds = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        name = str(path.relative_to(directory))
        if path.suffix == ".ckpt":
            torch.load(path, weights_only=True)
            kinds[name] = "checkpoint"
        elif path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt"):
                kinds[name] = "safetensors"
        elif path.suffix == ".npz":
            np.load(path, allow_pickle=False)
            kinds[name] = "npz"
        else:
            assert not data.startswith(b"\x80") and not zipfile.is_zipfile(path), f"{name} looks pickled"
            if path.suffix == ".json":
                json.loads(data)
            kinds[name] = "text"
    return kinds


def test_what_the_project_writes_is_safetensors_or_text(tmp_path, model_dir, explicit_file, tokenizer_dir, config):
    cli("precompute", "--config", config, "--model.reference=lit_align.reference.OfflineStore",
        f"--model.reference.path={tmp_path / 'store'}", "--every_n_batches=2")
    assert plain_files(tmp_path / "store") == {"reference.safetensors": "safetensors"}

    run = tmp_path / "run"
    fitted_trainer(run, model_dir, explicit_file, tokenizer_dir, steps=2, logger=CSVLogger(run),
                   callbacks=[ModelCheckpoint(dirpath=run / "checkpoints", save_last=True)], enable_checkpointing=True)
    kinds = plain_files(run)
    assert set(kinds.values()) == {"checkpoint", "text"} and "checkpoints/last.ckpt" in kinds

    sae = SparseAutoencoder(32, 64, activation="relu", layer=0)
    assert set(plain_files(save_saelens(sae, tmp_path / "saelens")).values()) == {"safetensors", "text"}
    save_gemma_scope(sae, tmp_path / "gemma")
    assert plain_files(tmp_path / "gemma") == {"params.npz": "npz"}

    import importlib.util

    spec = importlib.util.spec_from_file_location("train_sae", ROOT / "tools" / "train_sae.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main(["--model", model_dir, "--tokenizer", tokenizer_dir, "--data", str(explicit_file), "--layer", "0",
               "--output", str(tmp_path / "trained_sae"), "--d-sae", "64", "--k", "4", "--max-steps", "2",
               "--accelerator", "cpu"])
    kinds = plain_files(tmp_path / "trained_sae")
    assert kinds["sae_weights.safetensors"] == "safetensors" and kinds["cfg.json"] == "text"
    assert set(kinds.values()) == {"safetensors", "text"}
    assert load_sae(tmp_path / "trained_sae").d_sae == 64


if __name__ == "__main__":
    resume_on_two_processes(sys.argv[1])
