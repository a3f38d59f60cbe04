"""Every shipped config parses with the real CLI (a typo or a renamed argument fails here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_parses(config):
    result = subprocess.run(
        [sys.executable, "-m", "lit_align", "fit", "--config", str(config), "--print_config"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "objective:" in result.stdout
