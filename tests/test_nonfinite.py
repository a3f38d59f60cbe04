"""NonFiniteGuard (issue 8, item 3): a non-finite loss or gradient skips the optimizer step (weights and optimizer
state untouched), is counted and logged, and too many in a row stop training with a clear error."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from lit_align.callbacks import NonFiniteError, NonFiniteGuard
from lit_align.checkpoint_io import SafeCheckpointIO
from lit_align.data import PreferenceDataModule
from lit_align.models.policy import PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO
from lit_align.objectives.base import ObjectiveOutput, PreferenceInputs
from tests.test_distributed import loopback_env
from tests.test_module import adam, make_data, make_trainer

ROOT = Path(__file__).resolve().parents[1]


class NaNAt(FDPO):
    """f-DPO whose losses are NaN on the given (0-based) calls."""

    def __init__(self, calls: set[int] | range) -> None:
        super().__init__(beta=0.5)
        self.poisoned = set(calls)
        self.calls = 0

    def forward(self, inputs: PreferenceInputs) -> ObjectiveOutput:
        output = super().forward(inputs)
        if self.calls in self.poisoned:
            output.losses = output.losses * float("nan")
        self.calls += 1
        return output


class InfGradientAt(Callback):
    """Puts an inf into one gradient after the backward of the given training batches."""

    def __init__(self, batches: set[int]) -> None:
        self.batches = batches
        self.batch = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch = batch_idx

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.batch in self.batches:
            pl_module.policy.model.layers[1].mlp.up_proj.weight.grad[0, 0] = float("inf")


class WeightWatch(Callback):
    """Per training batch: did the policy's weights change? Also the weights after each batch."""

    def __init__(self) -> None:
        self.changed: list[bool] = []
        self.after: list[list[torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before = [p.detach().clone() for p in pl_module.policy.parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = [p.detach().clone() for p in pl_module.policy.parameters()]
        self.changed.append(any(not torch.equal(a, b) for a, b in zip(self.before, now, strict=True)))
        self.after.append(now)


def fit(tmp_path, model_dir, tokenizer_dir, explicit_file, objective, steps, callbacks=(), **trainer_kwargs):
    watch = WeightWatch()
    module = AlignmentModule(objective, PolicySpec(path=model_dir), optimizer=adam(1e-3))
    trainer = make_trainer(tmp_path, steps, callbacks=[watch, *callbacks], limit_val_batches=0, **trainer_kwargs)
    return module, trainer, watch, lambda: trainer.fit(module, make_data(explicit_file, tokenizer_dir, val_fraction=0))


def adam_steps(trainer) -> set[int]:
    """The step counts AdamW holds per parameter (one value when every parameter took the same steps)."""
    return {int(state["step"]) for state in trainer.optimizers[0].state.values()}


def test_adamw_without_gradients_changes_no_weight_and_no_state():
    torch.manual_seed(0)
    weights = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(weights.parameters(), lr=0.1, weight_decay=0.5)
    weights(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    before = {name: p.detach().clone() for name, p in weights.named_parameters()}
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    optimizer.zero_grad(set_to_none=True)
    optimizer.step()  # every gradient is None: no update, no weight decay, no moment or step change
    for name, p in weights.named_parameters():
        assert torch.equal(p, before[name])
        for key, value in optimizer.state[p].items():
            assert torch.equal(value, state[id(p)][key])


def test_nan_loss_skips_the_step_and_counts_it(tmp_path, model_dir, tokenizer_dir, explicit_file, caplog):
    module, trainer, watch, run = fit(tmp_path, model_dir, tokenizer_dir, explicit_file, NaNAt({1, 3}), 5)
    # the guard is on by default, with checkpoints saved and read safely
    assert [type(c) for c in trainer.callbacks].count(NonFiniteGuard) == 1
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
    with caplog.at_level(logging.WARNING, logger="lit_align.callbacks.nonfinite"):
        run()
    assert watch.changed == [True, False, True, False, True]
    assert trainer.callback_metrics["train/skipped_steps"] == 2
    assert adam_steps(trainer) == {3}  # the optimizer's state moved on the three good steps only
    assert all(torch.isfinite(p).all() for p in module.policy.parameters())
    assert "step 1: a non-finite loss and non-finite gradients in policy." in caplog.text
    assert "(1 in a row, 1 in all)" in caplog.text and "(1 in a row, 2 in all)" in caplog.text


def test_nonfinite_gradient_skips_the_step(tmp_path, model_dir, tokenizer_dir, explicit_file, caplog):
    _, trainer, watch, run = fit(tmp_path, model_dir, tokenizer_dir, explicit_file, FDPO(beta=0.5), 3,
                                 callbacks=[InfGradientAt({1})])
    with caplog.at_level(logging.WARNING, logger="lit_align.callbacks.nonfinite"):
        run()
    assert watch.changed == [True, False, True]
    assert trainer.callback_metrics["train/skipped_steps"] == 1
    assert "non-finite gradients in policy.model.layers.1.mlp.up_proj.weight;" in caplog.text
    assert "non-finite loss" not in caplog.text


def test_a_bad_micro_batch_skips_its_whole_accumulated_step(tmp_path, model_dir, tokenizer_dir, explicit_file):
    # 4 optimizer steps of 2 micro-batches; micro-batch 3 (the second of step 1) is NaN
    _, trainer, watch, run = fit(tmp_path, model_dir, tokenizer_dir, explicit_file, NaNAt({3}), 4,
                                 accumulate_grad_batches=2)
    run()
    assert watch.changed == [False, True, False, False, False, True, False, True]
    assert trainer.callback_metrics["train/skipped_steps"] == 1 and adam_steps(trainer) == {3}


def test_too_many_in_a_row_stop_training(tmp_path, model_dir, tokenizer_dir, explicit_file):
    guard = NonFiniteGuard(max_consecutive=3)
    _, trainer, watch, run = fit(tmp_path, model_dir, tokenizer_dir, explicit_file, NaNAt(range(1, 100)), 10,
                                 callbacks=[guard])
    assert [c for c in trainer.callbacks if isinstance(c, NonFiniteGuard)] == [guard]  # the configured one only
    with pytest.raises(NonFiniteError, match="3 optimizer steps in a row had a non-finite loss or gradient"):
        run()
    assert guard.skipped == 3 and watch.changed == [True, False, False]  # the third bad step never ends
    assert adam_steps(trainer) == {1}


def test_max_consecutive_is_validated():
    with pytest.raises(ValueError, match="max_consecutive must be >= 1"):
        NonFiniteGuard(max_consecutive=0)


class InfLossOnRank1(FDPO):
    """f-DPO whose loss on process 1, call 1, is +inf with finite gradients: only that process sees it."""

    calls = 0

    def forward(self, inputs: PreferenceInputs) -> ObjectiveOutput:
        output = super().forward(inputs)
        if self.calls == 1 and dist.get_rank() == 1:
            output.losses = output.losses + float("inf")
        self.calls += 1
        return output


def run_two_processes(spec_file: str) -> None:
    """``python -m tests.test_nonfinite SPEC``: 3 DDP steps on 2 processes; each writes what it saw."""
    spec = json.loads(Path(spec_file).read_text())
    watch = WeightWatch()
    module = AlignmentModule(InfLossOnRank1(beta=0.5), PolicySpec(path=spec["model"]), optimizer=adam(1e-3))
    data = PreferenceDataModule(path=spec["data"], tokenizer=spec["tokenizer"], max_length=64, max_prompt_length=32,
                                batch_size=2, val_fraction=0.0)
    trainer = make_trainer(Path(spec["out"]), 3, devices=2, strategy="ddp", callbacks=[watch], limit_val_batches=0)
    trainer.fit(module, data)
    seen = {"changed": watch.changed, "skipped": float(trainer.callback_metrics["train/skipped_steps"]),
            "weights": [p.double().sum().item() for p in module.policy.parameters()]}
    Path(spec["out"], f"rank{trainer.global_rank}.json").write_text(json.dumps(seen))


def test_processes_agree_to_skip_a_step_only_one_of_them_finds_bad(tmp_path, model_dir, tokenizer_dir, explicit_file):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"model": model_dir, "tokenizer": tokenizer_dir, "data": str(explicit_file),
                                "out": str(tmp_path)}))
    result = subprocess.run([sys.executable, "-m", "tests.test_nonfinite", str(spec)], cwd=ROOT, env=loopback_env(),
                            capture_output=True, text=True, timeout=150, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    first, second = (json.loads(path.read_text()) for path in sorted(tmp_path.glob("rank*.json")))
    # process 1's loss was inf with finite gradients (so DDP's gradient all-reduce stays finite): both skip
    assert first["changed"] == second["changed"] == [True, False, True]
    assert first["skipped"] == second["skipped"] == 1
    assert first["weights"] == second["weights"]
    assert "step 1: a non-finite loss or gradient on another process; optimizer step skipped" in result.stderr


if __name__ == "__main__":
    run_two_processes(sys.argv[1])
