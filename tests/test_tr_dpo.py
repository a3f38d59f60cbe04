"""TR-DPO (:class:`~lit_align.callbacks.ReferenceSync`): the update rule against a naive float64 loop, the reference
of a real run against the rule applied to the policy's recorded weights, the refusals, and an exact resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lit_align.callbacks import ReferenceSync
from lit_align.errors import ConfigError
from lit_align.models.policy import LoraSettings, PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO
from lit_align.reference import DisabledAdapter, FrozenCopy, OfflineStore
from lit_align.reference.sync import mix_into
from tests.test_module import adam, make_data, make_trainer


def naive_sync(reference: list[torch.Tensor], policies: list[list[torch.Tensor]], alpha: float, tau: int):
    """The paper's rule in float64: after optimizer step k (1-based), if τ divides k, θ_ref ← α θ_k + (1 − α) θ_ref."""
    ref = [t.double().clone() for t in reference]
    for step, weights in enumerate(policies, start=1):
        if step % tau == 0:
            ref = [alpha * w.double() + (1 - alpha) * r for w, r in zip(weights, ref, strict=True)]
    return ref


@pytest.mark.parametrize("alpha", [0.6, 1.0])
def test_mix_into_is_the_update_rule(alpha):
    torch.manual_seed(0)
    reference, policy = nn.Linear(3, 2), nn.Linear(3, 2)
    start = [p.detach().clone() for p in reference.parameters()]
    history = []
    for _ in range(4):
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(torch.randn_like(p))
        history.append([p.detach().clone() for p in policy.parameters()])
        mix_into(reference, policy, alpha)
    for got, want in zip(reference.parameters(), naive_sync(start, history, alpha, tau=1), strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_mix_into_refuses_models_that_differ():
    with pytest.raises(ConfigError, match="differ by name"):
        mix_into(nn.Sequential(nn.Linear(2, 2)), nn.Linear(2, 2), 0.5)


class PolicyRecorder(Callback):
    """The policy's weights after each optimizer step (placed before ReferenceSync, so before any update)."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.weights.append({n: p.detach().clone() for n, p in pl_module.policy.named_parameters()})


@pytest.mark.parametrize(("mode", "alpha", "tau"), [("soft", 0.6, 2), ("hard", None, 3)])
def test_reference_follows_the_rule_in_a_run(tmp_path, model_dir, tokenizer_dir, explicit_file, mode, alpha, tau):
    recorder = PolicyRecorder()
    module = AlignmentModule(FDPO(beta=0.5), PolicySpec(path=model_dir), optimizer=adam(3e-3))
    trainer = make_trainer(tmp_path, 6, callbacks=[recorder, ReferenceSync(mode, alpha, tau)], limit_val_batches=0)
    trainer.fit(module, make_data(explicit_file, tokenizer_dir, val_fraction=0.0))
    initial = FrozenCopy()
    initial.bind_policy_spec(module.policy_spec)
    initial.attach(module.policy)
    names = list(recorder.weights[0])
    start = [dict(initial.model.named_parameters())[n] for n in names]
    want = naive_sync(start, [[w[n] for n in names] for w in recorder.weights], alpha or 1.0, tau)
    got = dict(module.reference.model.named_parameters())
    for name, expected in zip(names, want, strict=True):
        torch.testing.assert_close(got[name].double(), expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(got[names[0]], start[0])  # it moved
    assert not any(p.requires_grad for p in module.reference.model.parameters())


@pytest.mark.parametrize("reference", [DisabledAdapter(), OfflineStore("reference.safetensors")])
def test_refuses_a_reference_without_a_model_of_its_own(reference):
    module = SimpleNamespace(reference=reference, policy_spec=PolicySpec(path="x"))
    with pytest.raises(ConfigError, match="set model.reference to FrozenCopy") as refusal:
        ReferenceSync().setup(None, module, "fit")
    assert "\n" not in str(refusal.value)


def test_refuses_a_lora_policy():
    module = SimpleNamespace(reference=FrozenCopy(), policy_spec=PolicySpec(path="x", lora=LoraSettings(r=4)))
    with pytest.raises(ConfigError, match="trains an adapter"):
        ReferenceSync().setup(None, module, "fit")


def test_refuses_bad_settings():
    with pytest.raises(ConfigError, match="unset alpha"):
        ReferenceSync("hard", alpha=0.5)
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        ReferenceSync(alpha=0.0)
    with pytest.raises(ConfigError, match="τ"):
        ReferenceSync(tau=0)


def fit(root, model_dir, tokenizer_dir, explicit_file, resume=None) -> AlignmentModule:
    saver = ModelCheckpoint(dirpath=root / "checkpoints", filename="{step}", every_n_train_steps=3, save_top_k=-1)
    module = AlignmentModule(FDPO(beta=0.5), PolicySpec(path=model_dir), optimizer=adam(3e-3))
    trainer = make_trainer(root, 7, callbacks=[ReferenceSync(alpha=0.5, tau=2), saver], enable_checkpointing=True,
                           limit_val_batches=0)
    trainer.fit(module, make_data(explicit_file, tokenizer_dir, val_fraction=0.0), ckpt_path=resume)
    return module


def test_resume_restores_the_synced_reference(tmp_path, model_dir, tokenizer_dir, explicit_file):
    whole = fit(tmp_path / "whole", model_dir, tokenizer_dir, explicit_file)
    checkpoint = tmp_path / "whole" / "checkpoints" / "step=3.ckpt"  # synced at step 2, next at 4
    resumed = fit(tmp_path / "resumed", model_dir, tokenizer_dir, explicit_file, resume=checkpoint)
    for (name, want), got in zip(whole.reference.model.named_parameters(), resumed.reference.model.parameters(),
                                 strict=True):
        assert torch.equal(got, want), name
