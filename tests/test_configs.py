"""Every shipped config parses with the real CLI (a typo or a renamed argument fails here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
THOUGHT_MODEL = "lit_align.thinker.LatentThoughtModule"


OVERLAYS = sorted((Path(__file__).resolve().parents[1] / "configs" / "overlays").glob("*.yaml"))


def print_config(entry: str, *configs: Path) -> str:
    given = [arg for config in configs for arg in ("--config", str(config))]
    result = subprocess.run([sys.executable, "-m", entry, "fit", *given, "--print_config"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_parses(config):
    """``lit-align`` parses each with the CLI it is meant for: an alignment config with ``AlignmentModule`` (an
    objective), one naming the ``LatentThoughtModule`` with ``lit-align-thinker``'s (the same as that entry's)."""
    printed = print_config("lit_align", config)
    if yaml.safe_load(config.read_text())["model"].get("class_path") == THOUGHT_MODEL:
        assert f"class_path: {THOUGHT_MODEL}" in printed and "objective:" not in printed
        assert printed == print_config("lit_align.thinker", config)
    else:
        assert "objective:" in printed


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[c.stem for c in OVERLAYS])
def test_overlay_parses_after_the_custom_config(overlay):
    """An overlay (``configs/overlays/``) is given after the config it changes, and changes only what it names."""
    alone = yaml.safe_load(print_config("lit_align", CONFIGS[0].with_name("dpo_custom.yaml")))
    overlaid = yaml.safe_load(print_config("lit_align", CONFIGS[0].with_name("dpo_custom.yaml"), overlay))
    assert overlaid["trainer"]["strategy"]["class_path"] == "lightning.pytorch.strategies.ModelParallelStrategy"
    assert overlaid["data"] == alone["data"] and overlaid["model"]["objective"] == alone["model"]["objective"]


def test_no_stray_top_level_optimizer_or_scheduler():
    """The optimizer and schedule are the module's (``--model.optimizer``, ``--model.schedule``): LightningCLI's own
    top-level ``--optimizer``/``--lr_scheduler``, which the module would ignore, are not offered."""
    help_text = subprocess.run([sys.executable, "-m", "lit_align", "fit", "--help"], capture_output=True, text=True,
                               timeout=120, check=True).stdout
    assert "--model.optimizer" in help_text and "--model.schedule" in help_text
    assert "\n  --optimizer" not in help_text and "\n  --lr_scheduler" not in help_text
    result = subprocess.run([sys.executable, "-m", "lit_align", "fit", "--config", str(CONFIGS[0]),
                             "--optimizer=torch.optim.SGD", "--print_config"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0 and "optimizer" in result.stderr
