"""On-policy training under DDP on CPU (issue 29, item 3): two real processes on 127.0.0.1, each sampling its own
prompts; a step with no pair on any process is skipped on both, and a step where one process has pairs and the
other none trains on the first's pairs without a hang.

Launched as ``python -m tests.test_on_policy_ddp SPEC.json`` (Lightning starts the second process); each rank writes
``rank{r}.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from lit_align.models.policy import PolicySpec
from lit_align.objectives import DPO
from lit_align.online.on_policy import OnPolicyModule
from lit_align.online.prompts import PromptDataModule
from tests.conftest import explicit_rows, write_jsonl
from tests.test_distributed import ROOT, TIMEOUT, loopback_env
from tests.test_module import make_trainer


class ScriptedTies:
    """The share of "e" in each response, except that on the calls (micro-batches) named in ``ties`` every
    response of the listed ranks scores 0: no pair there."""

    def __init__(self, ties: dict[int, list[int]]) -> None:
        self.ties = ties
        self.calls = 0

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        rank = torch.distributed.get_rank()
        tied = rank in self.ties.get(self.calls, [])
        self.calls += 1
        return torch.tensor([0.0 if tied or not r else r.count("e") / len(r) for r in responses], dtype=torch.float64)


class Record(Callback):
    """Per step: the prompts' keys and a checksum of the policy's weights after the step."""

    def __init__(self) -> None:
        self.keys: list[list[int]] = []
        self.sums: list[float] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = checksum(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.keys.append(batch["example_key"].tolist())
        self.sums.append(checksum(pl_module))


def checksum(module: OnPolicyModule) -> float:
    return sum(p.detach().double().abs().sum().item() for p in module.policy.parameters())


def run(spec: dict) -> None:
    out, rounds = Path(spec["out"]), spec.get("rounds")
    module = OnPolicyModule(DPO(beta=0.1), PolicySpec(path=spec["model"]),
                            reward_fn=ScriptedTies({} if rounds else {0: [0, 1], 1: [1]}), samples_per_prompt=4,
                            max_new_tokens=10, optimizer=partial(torch.optim.SGD, lr=0.5), iterative=bool(rounds))
    data = PromptDataModule(path=spec["prompts"], tokenizer=spec["tokenizer"], max_length=64, max_prompt_length=32,
                            batch_size=4, val_fraction=0.0)
    record = Record()
    by_epochs = dict(max_epochs=rounds, reload_dataloaders_every_n_epochs=1) if rounds else {}
    trainer = make_trainer(out, -1 if rounds else spec["steps"], strategy="ddp", devices=2, callbacks=[record],
                           **by_epochs)
    trainer.fit(module, data)
    facts = {"keys": record.keys, "sums": record.sums, "initial": record.initial, "skipped": module.skipped_steps,
             "world_size": trainer.world_size, "train_keys": sorted(data.train_set["example_key"])}
    if rounds:
        facts["round"] = [module.round.index, module.round.pairs]
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(facts))


def launch(tmp_path: Path, model_dir: str, tokenizer_dir: str, **spec) -> tuple[dict, dict]:
    """Both processes' facts from a two-process run of ``spec``."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": row["prompt"]} for row in explicit_rows(24)])
    spec = {"model": model_dir, "tokenizer": tokenizer_dir, "prompts": str(prompts), "out": str(tmp_path), **spec}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = subprocess.run([sys.executable, "-m", "tests.test_on_policy_ddp", str(tmp_path / "spec.json")], cwd=ROOT,
                            env=loopback_env(), capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    return first, second


def test_ddp_samples_its_own_prompts_and_skips_together(tmp_path, model_dir, tokenizer_dir):
    first, second = launch(tmp_path, model_dir, tokenizer_dir, steps=4)
    assert first["world_size"] == second["world_size"] == 2
    for a, b in zip(first["keys"], second["keys"], strict=True):  # each process its own prompts
        assert len(a) == len(b) == 4 and not set(a) & set(b)
    epoch = [key for step in range(3) for rank in (first, second) for key in rank["keys"][step]]
    assert sorted(epoch) == first["train_keys"]  # 24 prompts, 8 a step: every prompt once in 3 steps
    # step 0: no pair anywhere, skipped on both; step 1: pairs on rank 0 alone, a step on both; weights in sync
    assert first["skipped"] == second["skipped"] == 1
    assert first["sums"][0] == first["initial"] and first["sums"][1] != first["initial"]
    assert first["sums"] == second["sums"]


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))


def test_ddp_rounds_gather_every_process_pairs(tmp_path, model_dir, tokenizer_dir):
    """Iterative rounds under DDP: each process samples its own 12 prompts of a round, the round's pairs are
    gathered so both hold the same ones, and the training order deals them to the two (disjoint pairs a step, each
    pair of the round once); the weights stay equal."""
    first, second = launch(tmp_path, model_dir, tokenizer_dir, rounds=2)
    assert first["round"] == second["round"] and first["round"][0] == 1
    pairs = {pair["example_key"] for pair in first["round"][1]}
    assert 20 <= len(pairs) <= 24  # one pair per prompt of the 24, less any prompt whose samples all tie
    steps = len(first["keys"]) // 2
    last_round = [key for step in range(steps, len(first["keys"])) for rank in (first, second)
                  for key in rank["keys"][step]]
    assert set(last_round) == pairs and len(last_round) == len(pairs) + len(pairs) % 2  # an odd count repeats one
    for a, b in zip(first["keys"], second["keys"], strict=True):
        assert not set(a) & set(b)
    assert first["sums"] == second["sums"] and first["sums"][-1] != first["initial"]
