"""``tools/gpu_check.py --tiny``: the GPU acceptance script's code, every arm, on CPU with a tiny Llama."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = {"dpo", "dpo-dense", "dpo-flex", "dpo-padded", "dpo-fp32", "tdpo2", "fpo-store", "lora-dpo", "qlora-dpo",
        "trl-dpo", "trl-fp32"}
SKIPPED_ON_CPU = {"dpo-flex": "FlexAttention runs on CUDA only"}  # no FlexAttention backward on CPU


def test_gpu_check_tiny_runs_every_arm():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--tiny"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()[:1] and
            line.split()[0] in ARMS}
    assert set(rows) == ARMS, result.stdout
    for arm, row in rows.items():
        if arm in SKIPPED_ON_CPU:
            assert SKIPPED_ON_CPU[arm] in row, row
            continue
        if "skipped: trl is not installed" in row or "skipped: bitsandbytes is not installed" in row:
            continue
        numbers = [float(value) for value in re.findall(r"-?\d+\.?\d*", row.split(maxsplit=1)[1])]
        tokens_per_s, peak, losses = numbers[0], numbers[1], numbers[-3:]
        assert tokens_per_s > 0 and peak > 0, row
        assert abs(losses[0] - 0.693147) < 1e-3, row  # policy = reference at step 0: ln 2
    if importlib.util.find_spec("trl") is not None:
        # TRL matched trains lit-align's batches in lit-align's order: in fp32 their losses agree
        agreement = re.search(r"loss agreement dpo-fp32 vs trl-fp32 .*largest difference (\S+)", result.stdout)
        assert agreement and float(agreement.group(1)) < 1e-5, result.stdout
