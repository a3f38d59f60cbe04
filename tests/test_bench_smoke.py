"""Smoke test of ``python -m tools.bench --quick``: every arm trains 4 steps of a tiny model on the same batches, and
lit-align's first steps agree with the plain loops' (padded and packed) and TRL's (when the ``bench`` extra is
installed)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HH_FILE
from tools.bench import RECORDED_STEPS

ROOT = Path(__file__).resolve().parents[1]
HAS_TRL = importlib.util.find_spec("trl") is not None
NO_TRL = "trl is not installed: pip install -e '.[bench]' to benchmark against TRL's DPOTrainer"


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "summary.json"
    arms = ["plain", "plain-packed", "lit-align", "lit-align-padded", "lit-align-bf16", "lit-align-dense"]
    arms += ["trl"] if HAS_TRL else []
    done = subprocess.run(
        [sys.executable, "-m", "tools.bench", "--quick", "--data", str(HH_FILE), "--out", str(out), "--arms", *arms,
         "--row-tokens", "128"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())["summary"], done.stdout


def test_plain_and_lit_align_train_the_same_batches_to_the_same_numbers(quick):
    summary, stdout = quick
    plain, lit = summary["plain"], summary["lit-align"]
    assert plain["hashes"] == lit["hashes"] and len(lit["first"]) == RECORDED_STEPS
    for ours, theirs in zip(lit["first"], plain["first"], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    assert lit["first"][0]["loss"] == pytest.approx(0.6931472, abs=1e-6)  # policy = reference at step 0: ln 2
    assert lit["steps"] == plain["steps"] == 2 and lit["tokens_per_s"] > 0 and lit["peak_rss_mib"] > 0
    assert "| lit-align |" in stdout and "lit-align vs plain: largest difference" in stdout


def test_plain_packed_loop_trains_the_same_batches_to_lit_aligns_numbers(quick):
    """The floor of the packed layout: a hand-written loop over lit-align's packed rows, whose first step's loss
    (same weights, same batch) is AlignmentModule's, and whose later values follow it to fp32 rounding."""
    summary, stdout = quick
    plain, lit = summary["plain-packed"], summary["lit-align"]
    assert plain["hashes"] == lit["hashes"] and len(plain["first"]) == RECORDED_STEPS
    assert plain["first"][0]["loss"] == pytest.approx(lit["first"][0]["loss"], rel=1e-6, abs=1e-7)
    for ours, theirs in zip(lit["first"], plain["first"], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    assert plain["positions_per_token"] == pytest.approx(lit["positions_per_token"])  # the same packed rows
    assert "| plain-packed |" in stdout and "lit-align vs plain-packed: largest difference" in stdout
    assert "(plain-packed) |" in stdout  # the lit-align row measured against its own layout's floor


def test_packed_and_padded_arms_agree_and_packing_computes_fewer_positions(quick):
    summary, stdout = quick
    packed, padded = summary["lit-align"], summary["lit-align-padded"]
    assert packed["hashes"] == padded["hashes"]
    for ours, theirs in zip(packed["first"], padded["first"], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    assert packed["positions_per_token"] < 1 < padded["positions_per_token"]  # prompts once, no padding
    assert "| lit-align-padded |" in stdout


@pytest.mark.skipif(not HAS_TRL, reason=NO_TRL)
def test_trl_trains_the_same_batches_to_the_same_numbers(quick):
    summary, stdout = quick
    trl, lit = summary["trl"], summary["lit-align"]
    assert trl["hashes"] == lit["hashes"]
    for ours, theirs in zip(lit["first"], trl["first"], strict=True):
        for name, value in ours.items():
            assert theirs[name] == pytest.approx(value, rel=1e-4, abs=1e-4), name
    assert "lit-align vs trl" in stdout and "agree to 1e-4" in stdout


def test_row_size_arm_trains_the_same_numbers_in_more_rows(quick):
    """``--row-tokens 128`` adds ``lit-align-rows128``: attention over whole rows (``lit-align-dense``) on the same
    batches, shared out between more, shorter rows (more row-end padding, fewer attention scores), to the same
    numbers; the row-size table compares it with the dense arm at the default row size."""
    summary, stdout = quick
    rows, dense = summary["lit-align-rows128"], summary["lit-align-dense"]
    assert rows["hashes"] == dense["hashes"]
    for ours, theirs in zip(rows["first"], dense["first"], strict=True):  # rewards: β × log-probs of ~300, fp32
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-5)
    assert rows["positions_per_token"] > dense["positions_per_token"]
    assert rows["cells_per_token"] < dense["cells_per_token"]
    assert "| 128 | lit-align-rows128 |" in stdout


def test_dense_arm_trains_the_same_numbers_over_whole_rows(quick):
    """``lit-align-dense``: lit-align before attention by pair (SDPA over each packed row and its 4D mask), the same
    numbers at more attention scores computed."""
    summary, _ = quick
    dense, lit = summary["lit-align-dense"], summary["lit-align"]
    for ours, theirs in zip(dense["first"], lit["first"], strict=True):
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-5)
    assert dense["cells_per_token"] > lit["cells_per_token"]


def test_bf16_arm_follows_fp32_to_bf16_rounding(quick):
    """``lit-align-bf16`` (``trainer.precision: bf16-mixed``): step 0 is ln 2 (policy = reference, computed alike),
    the summed log-probs follow the fp32 arm's to bf16 rounding, and the agreement is reported."""
    summary, stdout = quick
    bf16, fp32 = summary["lit-align-bf16"], summary["lit-align"]
    assert bf16["hashes"] == fp32["hashes"]
    assert bf16["first"][0]["loss"] == pytest.approx(0.6931472, abs=1e-6)
    for ours, theirs in zip(bf16["first"], fp32["first"], strict=True):
        for name in ("logps/chosen", "logps/rejected"):
            assert ours[name] == pytest.approx(theirs[name], rel=1e-2), name
    assert f"lit-align-bf16 vs lit-align (fp32), first {RECORDED_STEPS} steps: loss differences" in stdout
