"""A large policy and its frozen-copy reference load once (``lit_align/models/loading.py``) under FSDP2, FSDP1 and
DDP: 2 gloo processes, a ~190M-parameter Llama from its config; each process's peak host memory above its baseline
is what it holds (its shards of the policy and the reference; under DDP both whole) plus less than half the fp32 model —
where ``from_pretrained`` in every process and a deep copy cost 1.2× (FSDP1) to 1.5× (FSDP2) the model beyond that
(``python tools/load_memory.py --whole``). The training numbers of these paths equal one process's:
``tests/test_distributed.py`` (its FSDP and DDP runs load this way)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "load_memory.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("load_memory", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("load_memory")  # the model is written once, for the three runs


@pytest.mark.parametrize("strategy", ["fsdp2", "fsdp", "ddp"])
def test_each_process_holds_its_part_and_one_weight(tool, work, strategy):
    ranks = tool.measure(work, whole=False, hidden=1024, layers=14, vocab=16384, strategy=strategy)
    assert [rank["rank"] for rank in ranks] == [0, 1]
    for rank in ranks:
        size = rank["fp32_size"]
        assert size > 700e6  # ~190M parameters
        held = {"fsdp2": size, "ddp": 2 * size}.get(strategy)  # half or all of the policy and of the reference
        if strategy == "fsdp":  # half of each, but the reference's LM head whole (wrap_frozen_fsdp1)
            held = size + 16384 * 1024 * 4 / 2
        assert rank["held"] == pytest.approx(held, rel=1e-3)
        # under DDP, once built: DDP's wrapper then broadcasts rank 0's weights (see docs/distributed.md)
        overhead = rank["configured_overhead"] if strategy == "ddp" else rank["overhead"]
        assert overhead < 0.5, rank
