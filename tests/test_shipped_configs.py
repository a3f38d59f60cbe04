"""Configs travel with the package (issue 24, item 5): a wheel holds them, ``--config NAME`` finds one from any
folder, ``lit-align configs`` lists them and ``lit-align configs copy`` copies one out to edit."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from tests.test_distributed import ROOT, TIMEOUT, loopback_env


def lit_align(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lit_align", *args], cwd=cwd, env=loopback_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)


def test_the_wheel_holds_the_configs(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT / "lit_align", source / "lit_align", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=TIMEOUT)
    (wheel,) = tmp_path.glob("lit_align-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"lit_align/configs/{path.relative_to(ROOT / 'configs').as_posix()}"
               for path in (ROOT / "configs").rglob("*.yaml")}
    assert shipped and shipped <= names


def test_a_shipped_config_is_found_by_name_from_any_folder(tmp_path):
    result = lit_align("fit", "--config", "quickstart", "--config", "overlays/fsdp2", "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "class_path: lit_align.objectives.FDPO" in result.stdout
    assert "class_path: lightning.pytorch.strategies.ModelParallelStrategy" in result.stdout


def test_configs_lists_and_copies_out(tmp_path):
    listed = lit_align("configs", cwd=tmp_path)
    assert listed.returncode == 0 and "quickstart  " in listed.stdout and "overlays/fsdp2  " in listed.stdout
    copied = lit_align("configs", "copy", "dpo_custom", cwd=tmp_path)
    assert copied.returncode == 0 and (tmp_path / "dpo_custom.yaml").read_text() == (
        ROOT / "configs" / "dpo_custom.yaml").read_text()
    again = lit_align("configs", "copy", "dpo_custom", cwd=tmp_path)
    assert again.returncode == 2 and "exists already" in again.stderr
