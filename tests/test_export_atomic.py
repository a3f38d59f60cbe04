"""An export directory ends holding exactly one model, whatever happened to it: ``lit-align export`` (run as a user
runs it, in a subprocess) refuses a non-empty directory unless ``--overwrite true`` and a path that is a file, and
writes beside and swaps in, so a stale LoRA adapter never sits beside new weights and a full disk or a ``kill -9``
mid-export leaves the old model intact (or nothing). Files follow the umask. ``SaveHFModel`` keeps the same rule.

The faults are made deterministic in the child: ``RLIMIT_FSIZE`` (with ``SIGXFSZ`` ignored) fails every write past
N bytes with ``EFBIG``, as a full disk does; a ``python -c`` wrapper replaces ``safetensors.torch.save_file`` by one
that writes the file and then sends itself ``SIGKILL``."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_align.export import export_checkpoint
from lit_align.models.policy import LoraSettings, PolicySpec, add_adapter

REPO = Path(__file__).resolve().parents[1]
LORA = {"r": 4, "alpha": 8}
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors"}
IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])
KILL_AFTER_FIRST_WEIGHT_FILE = """
import os, sys
import safetensors.torch

save_file = safetensors.torch.save_file

def save_then_die(*args, **kwargs):
    save_file(*args, **kwargs)
    os.kill(os.getpid(), 9)

safetensors.torch.save_file = save_then_die  # before transformers and peft import it
from lit_align.cli import main
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, model_dir) -> dict[str, Path]:
    """Two Lightning-style checkpoints of the tiny model: a full fine-tune (``full``) and a LoRA run (``lora``,
    its adapter far from zero), written directly (no training: the export reads ``state_dict`` and the policy)."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(1)
    full = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = add_adapter(AutoModelForCausalLM.from_pretrained(model_dir),
                       PolicySpec(path=model_dir, lora=LoraSettings(**LORA)))
    with torch.no_grad():
        for parameter in full.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    paths = {}
    for name, model, policy in [("full", full, {"path": model_dir}), ("lora", lora, {"path": model_dir, "lora": LORA})]:
        paths[name] = root / f"{name}.ckpt"
        torch.save({"state_dict": {f"policy.{key}": value for key, value in model.state_dict().items()},
                    "hyper_parameters": {"policy": policy}}, paths[name])
    return paths


@pytest.fixture(scope="module")
def exports(tmp_path_factory, checkpoints) -> dict[str, Path]:
    """Pristine exports to copy as a directory's earlier content: ``full`` (a model), ``adapter`` (LoRA alone)."""
    root = tmp_path_factory.mktemp("exports")
    return {"full": export_checkpoint(str(checkpoints["full"]), str(root / "full")),
            "adapter": export_checkpoint(str(checkpoints["lora"]), str(root / "adapter"))}


def lit_align_export(*args: str, wrapper: str | None = None, max_file_bytes: int | None = None,
                     umask: int = 0o022) -> subprocess.CompletedProcess:
    """``lit-align export ARGS`` in a child process, of the repository this test file is in."""
    entry = ["-c", wrapper] if wrapper else ["-m", "lit_align"]

    def limits() -> None:
        os.umask(umask)
        if max_file_bytes is not None:  # a full disk: writes past the limit fail with EFBIG
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("LIT_ALIGN_DEBUG", None)
    return subprocess.run([sys.executable, *entry, "export", *args], cwd=REPO, env=env, preexec_fn=limits,
                          capture_output=True, text=True, timeout=300)


def logits(directory: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    assert not hasattr(model, "peft_config"), f"{directory} loads with an adapter attached"
    with torch.no_grad():
        return model(input_ids=IDS).logits


def snapshot(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir()}


def one_line_error(result: subprocess.CompletedProcess, status: int, start: str) -> str:
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(start), result.stderr[-3000:]
    return last


def visible_siblings(directory: Path) -> set[str]:
    return {path.name for path in directory.parent.iterdir() if not path.name.startswith(".")}


def test_an_earlier_lora_export_is_refused_then_replaced_whole(tmp_path, checkpoints, exports, tokenizer_dir):
    out = tmp_path / "out"
    shutil.copytree(exports["adapter"], out)
    before = snapshot(out)
    refused = lit_align_export("--ckpt_path", str(checkpoints["full"]), "--output_dir", str(out))
    line = one_line_error(refused, 2, f"error: output_dir='{out}': not empty (holds README.md, adapter_config.json")
    assert "--overwrite true" in line
    assert snapshot(out) == before

    done = lit_align_export("--ckpt_path", str(checkpoints["full"]), "--output_dir", str(out), "--overwrite", "true",
                            "--tokenizer", tokenizer_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    names = {path.name for path in out.iterdir()}
    assert MODEL_FILES <= names and "tokenizer_config.json" in names
    assert not any(name.startswith(("adapter_", "README")) for name in names)  # nothing of the adapter is left
    torch.testing.assert_close(logits(out), logits(exports["full"]), atol=1e-6, rtol=0)
    assert visible_siblings(out) == {"out"} and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_output_dir_that_is_a_file_is_one_line(tmp_path, checkpoints):
    target = tmp_path / "model.bin"
    target.write_text("not a directory")
    for extra in ([], ["--overwrite", "true"]):
        result = lit_align_export("--ckpt_path", str(checkpoints["full"]), "--output_dir", str(target), *extra)
        one_line_error(result, 2, f"error: output_dir='{target}': a file, not a directory")
    assert target.read_text() == "not a directory"
    assert {path.name for path in tmp_path.iterdir()} == {"model.bin"}


def test_a_full_disk_leaves_the_old_model_or_nothing(tmp_path, checkpoints, exports):
    fresh, out = tmp_path / "fresh", tmp_path / "out"
    args = ["--ckpt_path", str(checkpoints["lora"]), "--merge", "true"]
    full_disk = lit_align_export(*args, "--output_dir", str(fresh), max_file_bytes=100_000)  # weights ~200 kB
    assert not fresh.exists()  # was: config.json and generation_config.json without weights
    one_line_error(full_disk, 1, f"error: could not write the export to {fresh}, left as it was")
    assert not list(tmp_path.iterdir())  # the half-written sibling was removed

    shutil.copytree(exports["full"], out)
    before, old = snapshot(out), logits(out)
    full_disk = lit_align_export(*args, "--overwrite", "true", "--output_dir", str(out), max_file_bytes=100_000)
    assert "File too large" in one_line_error(full_disk, 1, f"error: could not write the export to {out}")
    assert snapshot(out) == before
    torch.testing.assert_close(logits(out), old, atol=0, rtol=0)
    assert {path.name for path in tmp_path.iterdir()} == {"out"}


def test_a_kill_inside_an_export_leaves_the_old_model_or_nothing(tmp_path, checkpoints, exports):
    fresh, out = tmp_path / "other" / "fresh", tmp_path / "out"
    args = ["--ckpt_path", str(checkpoints["lora"]), "--merge", "true"]
    killed = lit_align_export(*args, "--output_dir", str(fresh), wrapper=KILL_AFTER_FIRST_WEIGHT_FILE)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not fresh.exists() and not visible_siblings(fresh)  # was: a model without its tokenizer or a config

    shutil.copytree(exports["full"], out)
    before, old = snapshot(out), logits(out)
    killed = lit_align_export(*args, "--overwrite", "true", "--output_dir", str(out),
                              wrapper=KILL_AFTER_FIRST_WEIGHT_FILE)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert snapshot(out) == before
    torch.testing.assert_close(logits(out), old, atol=0, rtol=0)
    assert visible_siblings(out) == {"out", "other"}  # what the kills left is hidden (a dot-name), never a model

    done = lit_align_export(*args, "--overwrite", "true", "--output_dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert {path.name for path in out.iterdir()} == MODEL_FILES
    assert (logits(out) - old).abs().max() > 1e-3  # the merged LoRA model replaced the old one
    assert {path.name for path in tmp_path.iterdir()} == {"out", "other"}  # the killed run's leftover is gone


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_exported_files_follow_the_umask(tmp_path, checkpoints, umask, file_mode, dir_mode):
    out = tmp_path / "out"
    done = lit_align_export("--ckpt_path", str(checkpoints["lora"]), "--output_dir", str(out), umask=umask)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.stat().st_mode & 0o777 == dir_mode
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in out.iterdir()}
    assert "adapter_model.safetensors" in modes  # was 0o600: safetensors writes through a 0600 temporary file
    assert set(modes.values()) == {oct(file_mode)}, modes


def test_without_renameat2_the_swap_is_two_renames(tmp_path, monkeypatch, checkpoints, exports):
    from lit_align import atomic_dir

    monkeypatch.setattr(atomic_dir, "_exchange", lambda first, second: False)  # not Linux, or NFS
    out = tmp_path / "out"
    shutil.copytree(exports["adapter"], out)
    export_checkpoint(str(checkpoints["full"]), str(out), overwrite=True)
    assert {path.name for path in out.iterdir()} == MODEL_FILES
    torch.testing.assert_close(logits(out), logits(exports["full"]), atol=1e-6, rtol=0)

    (out / "step-2").mkdir()
    with pytest.raises(RuntimeError), atomic_dir.replacing_directory(out) as staging:
        (staging / "model.safetensors").write_text("half")
        raise RuntimeError("the disk filled up")
    with atomic_dir.replacing_directory(out, keep=lambda entry: entry.name == "step-2") as staging:
        (staging / "config.json").write_text("{}")
    assert {path.name for path in out.iterdir()} == {"config.json", "step-2"}
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_save_hf_model_refuses_a_foreign_model_unless_overwrite(tmp_path, model_dir, tokenizer_dir, explicit_file,
                                                                 exports):
    from lit_align.callbacks import SaveHFModel
    from lit_align.errors import ConfigError
    from tests.test_export import assert_same_function, train

    hf = tmp_path / "hf"
    shutil.copytree(exports["adapter"], hf)
    before = snapshot(hf)
    with pytest.raises(ConfigError, match=r"SaveHFModel.dirpath=.*not empty .*SaveHFModel\(overwrite=True\)"):
        train(tmp_path / "refused", model_dir, tokenizer_dir, explicit_file, callbacks=[SaveHFModel(dirpath=str(hf))])
    assert snapshot(hf) == before

    saver = SaveHFModel(dirpath=str(hf), every_n_train_steps=2, overwrite=True)
    module, _, batch = train(tmp_path, model_dir, tokenizer_dir, explicit_file, callbacks=[saver])
    names = {path.name for path in hf.iterdir()}
    assert MODEL_FILES | {"step-2", "tokenizer_config.json"} <= names
    assert not any(name.startswith(("adapter_", "README")) for name in names)
    assert_same_function(hf, module, batch)
    assert (hf / "step-2" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~current_umask()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
