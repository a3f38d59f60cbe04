"""The step's own overheads (issue 27, item 3): ``NonFiniteGuard`` judges the gradients by one fused scalar, their
total norm, with the same decisions as checking every gradient; the default optimizer runs torch's fused AdamW where
it gives the same parameters as torch's one-tensor-at-a-time AdamW (lit-align's earlier default), to 1e-6."""

from __future__ import annotations

import inspect
import logging
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lit_align.callbacks import NonFiniteGuard
from lit_align.module import AlignmentModule
from lit_align.schedule import AdamW, default_optimizer, fusable

# ------------------------------------------------------------------------------------------- the non-finite guard


class Module(nn.Module):
    """A stand-in LightningModule: two layers with gradients, and what the guard logs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second = nn.Linear(4, 4), nn.Linear(4, 2)
        self.second(self.first(torch.randn(3, 4))).sum().backward()
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, **_: object) -> None:
        self.logged[name] = value


def stub_trainer(scaler: object = None) -> SimpleNamespace:
    strategy = SimpleNamespace(reduce_boolean_decision=lambda decision, all: decision)
    return SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler), strategy=strategy, global_step=7,
                           is_global_zero=True)


def step(module: Module, loss: float = 1.0, scaler: object = None) -> tuple[NonFiniteGuard, torch.optim.Optimizer]:
    """One optimizer step's checks: the loss's before backward, then the gradients'."""
    guard, optimizer = NonFiniteGuard(), torch.optim.SGD(module.parameters(), lr=0.1)
    trainer = stub_trainer(scaler)
    guard.on_before_backward(trainer, module, torch.tensor(loss))
    guard.on_before_optimizer_step(trainer, module, optimizer)
    return guard, optimizer


def test_finite_gradients_are_judged_by_one_fused_norm_not_per_tensor(monkeypatch):
    module = Module()
    per_tensor = []
    isfinite = torch.isfinite
    monkeypatch.setattr(torch, "isfinite", lambda tensor: per_tensor.append(tensor.shape) or isfinite(tensor))
    guard, _ = step(module)
    assert guard.skipped == 0 and module.logged["train/skipped_steps"] == 0.0
    assert all(p.grad is not None for p in module.parameters())
    assert [shape for shape in per_tensor if shape != ()] == []  # no gradient checked on its own (the loss is 0-d)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_nonfinite_gradient_skips_the_step_and_is_named(value, caplog):
    module = Module()
    module.second.bias.grad[1] = value
    with caplog.at_level(logging.WARNING, logger="lit_align.callbacks.nonfinite"):
        guard, _ = step(module)
    assert guard.skipped == 1 and module.logged["train/skipped_steps"] == 1.0
    assert all(p.grad is None for p in module.parameters())
    assert "step 7: non-finite gradients in second.bias; optimizer step skipped" in caplog.text


def test_huge_finite_gradients_whose_norm_overflows_are_not_skipped():
    module = Module()
    module.first.weight.grad.fill_(1e20)  # finite, but their squares (and so their norm) overflow fp32
    assert not torch.isfinite(torch.nn.utils.get_total_norm([module.first.weight.grad]))
    guard, _ = step(module)
    assert guard.skipped == 0 and all(p.grad is not None for p in module.parameters())


def test_a_nonfinite_loss_alone_skips_the_step(caplog):
    module = Module()
    with caplog.at_level(logging.WARNING, logger="lit_align.callbacks.nonfinite"):
        guard, _ = step(module, loss=float("nan"))
    assert guard.skipped == 1 and all(p.grad is None for p in module.parameters())
    assert "step 7: a non-finite loss; optimizer step skipped" in caplog.text


def test_with_a_grad_scaler_the_gradients_are_left_to_it():
    module = Module()
    module.second.bias.grad[0] = float("nan")
    guard, _ = step(module, scaler=object())
    assert guard.skipped == 0 and module.second.bias.grad is not None


# ------------------------------------------------------------------------------------------- the default optimizer


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=generator)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_fused_adamw_gives_the_parameters_of_the_earlier_one_to_1e6(model_dir, weight_decay):
    from transformers import AutoModelForCausalLM

    def model() -> nn.Module:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).train()

    now, before = model(), model()
    fused = AdamW(now.parameters(), lr=1e-3, weight_decay=weight_decay)
    assert fused.param_groups[0]["fused"] is True  # on CPU, torch's fused kernel
    earlier = torch.optim.AdamW(before.parameters(), lr=1e-3, weight_decay=weight_decay)  # torch's pick: foreach off
    for a, b in zip(train(now, fused), train(before, earlier), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(now.parameters(), model().parameters(), strict=True))


def test_default_optimizer_is_the_fused_adamw_at_the_default_settings():
    assert inspect.signature(AlignmentModule).parameters["optimizer"].default is default_optimizer
    optimizer = default_optimizer(p for p in [nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3, 2))])
    assert type(optimizer) is AdamW and len(optimizer.param_groups[0]["params"]) == 2
    group = optimizer.param_groups[0]
    assert group["fused"] is True
    assert (group["lr"], group["weight_decay"], group["betas"], group["eps"]) == (5e-6, 0.0, (0.9, 0.999), 1e-8)


def test_fused_only_where_torch_has_the_kernel():
    weight = nn.Parameter(torch.ones(3))
    assert fusable([weight]) and fusable([{"params": [weight]}, {"params": weight}])
    assert not fusable([nn.Parameter(torch.ones(3, device="meta"))]) and not fusable([])
    assert AdamW([weight], fused=False).param_groups[0]["fused"] is None  # torch's own choice
    assert AdamW([{"params": [weight], "lr": 0.1}]).param_groups[0]["fused"] is True


def test_lightning_unscales_before_the_step_callbacks_see_the_gradients():
    """A fused AdamW says it unscales a ``GradScaler``'s gradients itself (``_step_supports_amp_scaling``): Lightning
    then hands it scaled gradients, the guards read them scaled in ``on_before_optimizer_step`` and gradient
    clipping is refused. lit-align's AdamW leaves the unscaling to the scaler, as any other optimizer."""
    from lightning.pytorch.plugins.precision.amp import _optimizer_handles_unscaling

    assert _optimizer_handles_unscaling(torch.optim.AdamW([nn.Parameter(torch.ones(2))], fused=True))
    assert not _optimizer_handles_unscaling(AdamW([nn.Parameter(torch.ones(2))]))


def test_a_grad_scaler_step_gives_the_unscaled_update():
    """Unscaled first (as Lightning does before ``on_before_optimizer_step``), then stepped by the scaler: the
    gradients read in between are the true ones, and the update is plain AdamW's."""
    torch.manual_seed(0)
    scaled, plain = nn.Linear(3, 2), nn.Linear(3, 2)
    plain.load_state_dict(scaled.state_dict())
    inputs = torch.randn(4, 3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = AdamW(scaled.parameters(), lr=0.1)
    reference = torch.optim.AdamW(plain.parameters(), lr=0.1, weight_decay=0.0)
    scaler.scale(scaled(inputs).sum()).backward()
    plain(inputs).sum().backward()
    scaler.unscale_(optimizer)
    for ours, theirs in zip(scaled.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad)
    scaler.step(optimizer)
    reference.step()
    for ours, theirs in zip(scaled.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_a_config_can_name_it():
    """``model.optimizer: {class_path: lit_align.schedule.AdamW, init_args: {lr: ...}}``, as jsonargparse reads it."""
    from jsonargparse import ArgumentParser
    from lightning.pytorch.cli import OptimizerCallable

    parser = ArgumentParser()
    parser.add_argument("--optimizer", type=OptimizerCallable)
    config = parser.parse_object({"optimizer": {"class_path": "lit_align.schedule.AdamW", "init_args": {"lr": 1e-3}}})
    optimizer = parser.instantiate(config).optimizer([nn.Parameter(torch.ones(2))])
    assert type(optimizer) is AdamW and optimizer.param_groups[0]["lr"] == 1e-3 and optimizer.param_groups[0]["fused"]
