"""TR-DPO under sharding (issue 26, item 3): the FSDP2-sharded frozen copy is mixed towards the sharded policy shard by
shard, and gives the one-process run's losses step for step (with τ = 1 every loss after the first reads a
reference the updates moved); a resume from a sharded checkpoint restores the mixed reference exactly."""

from __future__ import annotations

import pytest
import torch

from tests.distributed_run import run
from tests.test_distributed import common, global_losses, launch, ranks  # noqa: F401 (a fixture)

SYNC = {"mode": "soft", "alpha": 0.5, "tau": 1}


@pytest.fixture(scope="module")
def single_tr_dpo(common, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("single_tr_dpo")
    run({**common, "lr": 0.3, "strategy": "auto", "batch_size": 4, "out": str(out), "tr_dpo": SYNC})
    return out


def test_fsdp2_reference_sync_equals_one_process_and_resumes(common, single_tr_dpo, tmp_path):  # noqa: F811
    sharded = {**common, "lr": 0.3, "strategy": "fsdp2", "devices": 2, "batch_size": 2, "tr_dpo": SYNC}
    full = launch({**sharded, "save_every": 2}, tmp_path / "full")
    alone = ranks(single_tr_dpo)[0]["losses"]
    torch.testing.assert_close(global_losses(full), alone, atol=1e-5, rtol=0)
    frozen = launch({**sharded, "tr_dpo": None}, tmp_path / "frozen")
    assert abs(global_losses(frozen)[-1] - alone[-1]) > 1e-4  # the updates changed what the losses read

    checkpoint = tmp_path / "full" / "checkpoints" / "step=2.ckpt"
    resumed = launch({**sharded, "resume": str(checkpoint)}, tmp_path / "resumed")
    for whole, second in zip(full, resumed, strict=True):
        assert second["losses"] == whole["losses"][2:]
