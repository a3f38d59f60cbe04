"""A large policy loads once under FSDP2 (``lit_align/loading.py``): 2 gloo processes, a ~190M-parameter Llama from
its config; each process's peak host memory above its baseline is its shards of the policy and the reference plus
less than half the fp32 model — where ``from_pretrained`` in every process and a deep copy cost 2.5× the model
(``python tools/load_memory.py --whole``). The training numbers of this path equal one process's:
``tests/test_distributed.py`` (FSDP2 runs load this way)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "load_memory.py"


def test_each_process_reads_only_its_shards(tmp_path):
    spec = importlib.util.spec_from_file_location("load_memory", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    ranks = tool.measure(tmp_path, whole=False, hidden=1024, layers=10)
    assert [rank["rank"] for rank in ranks] == [0, 1]
    for rank in ranks:
        assert rank["fp32_size"] > 700e6  # ~190M parameters
        assert rank["held"] == rank["fp32_size"]  # half the policy and half the reference
        assert rank["peak"] - rank["baseline"] - rank["held"] < 0.5 * rank["fp32_size"], rank
