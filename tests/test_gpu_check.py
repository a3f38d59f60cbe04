"""``tools/gpu_check.py --tiny``: the GPU acceptance script's code, every arm, on CPU with a tiny Llama."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_runs_every_arm():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--tiny"], cwd=ROOT,
                            capture_output=True, text=True, timeout=400, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()[:1] and
            line.split()[0] in ("dpo", "dpo-padded", "tdpo2", "fpo-store", "lora-dpo", "trl-dpo")}
    assert set(rows) == {"dpo", "dpo-padded", "tdpo2", "fpo-store", "lora-dpo", "trl-dpo"}, result.stdout
    for row in rows.values():
        if "skipped: trl is not installed" in row:
            continue
        tokens_per_s, peak = (float(value) for value in re.findall(r"\d+\.?\d*", row.split(maxsplit=1)[1])[:2])
        assert tokens_per_s > 0 and peak > 0, row
