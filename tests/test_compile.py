"""``model.compile`` (issue 26, item 5): a compiled fit of the tiny Llama gives the eager fit's losses, every decoder
layer of policy and reference is compiled in place (names unchanged), batches of varying packed lengths and row
counts compile a bounded number of graphs, none after the first few, and checkpointed and LoRA layers compile
without falling back to eager."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser
from torch._dynamo.utils import counters

from lit_align.data.collator import PairCollator
from lit_align.models.compiling import is_compiled
from lit_align.models.policy import LoraSettings, PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import DPO, TDPO, PairwiseObjective
from lit_align.sae.hooks import decoder_layers
from tests.test_fpo_module import built, perturb
from tests.test_module import LossRecorder, adam, make_data, make_trainer
from tests.test_packing import PAIRS, TINY, random_pairs


def graphs() -> int:
    """Graphs dynamo has compiled since the last reset."""
    return counters["stats"]["unique_graphs"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def fit(root, model_dir, tokenizer_dir, explicit_file, compile: bool) -> tuple[list[float], AlignmentModule]:
    torch.manual_seed(0)
    recorder = LossRecorder()
    objective = PairwiseObjective(beta=0.5, ld_alpha=0.5, wpo=True)  # the per-token paths too
    module = AlignmentModule(objective, PolicySpec(path=model_dir), optimizer=adam(1e-3), compile=compile)
    trainer = make_trainer(root, 3, callbacks=[recorder], limit_val_batches=0)
    trainer.fit(module, make_data(explicit_file, tokenizer_dir, val_fraction=0.0))
    return recorder.losses, module


def test_compiled_fit_equals_eager(tmp_path, model_dir, tokenizer_dir, explicit_file):
    eager, _ = fit(tmp_path / "eager", model_dir, tokenizer_dir, explicit_file, compile=False)
    assert graphs() == 0
    compiled, module = fit(tmp_path / "compiled", model_dir, tokenizer_dir, explicit_file, compile=True)
    assert graphs() > 0 and len(compiled) == len(eager) == 3
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-5, atol=1e-5)
    for model in (module.policy, module.reference.model):
        assert all(is_compiled(layer) for layer in decoder_layers(model))
    assert not any("_orig_mod" in name for name in module.state_dict())


def test_recompiles_stay_bounded_over_varying_lengths():
    spec = PolicySpec(config=dict(model_type="llama", **TINY))
    module = built(AlignmentModule(DPO(), spec, compile=True))
    generator = torch.Generator().manual_seed(0)
    seen = []
    for step in range(8):  # 2 to 5 pairs of 1 to 12 tokens each part; one packed row, or up to 5
        pairs = int(torch.randint(2, 6, (1,), generator=generator))
        lengths = [tuple(torch.randint(1, 13, (3,), generator=generator).tolist()) for _ in range(pairs)]
        batch = PairCollator(pad_token_id=0, row_tokens=None if step in (0, 5) else 24)(random_pairs(lengths, step))
        module(batch).loss.backward()
        seen.append((tuple(batch["packed"]["input_ids"].shape), graphs()))
    shapes = {shape for shape, _ in seen}
    rows = {count for count, _ in shapes}
    assert len(shapes) == 8 and 1 in rows and len(rows) > 2  # every batch a new shape, one row and several
    # policy (with grad) and reference (without): one graph for one row, one for several; then none
    assert graphs() <= 4, seen
    assert seen[-1][1] == max(count for _, count in seen[:6]), seen



@pytest.mark.parametrize("setting", ["gradient_checkpointing", "lora"])
def test_checkpointed_and_lora_layers_compile_without_breaks(setting):
    """Under gradient checkpointing the policy's layers compile too (no fallback to eager), and a LoRA policy's
    layers serve as the adapter-disabled reference; loss and gradients equal eager's."""
    extra = {"gradient_checkpointing": True} if setting == "gradient_checkpointing" else {"lora": LoraSettings(r=4)}
    spec = PolicySpec(config=dict(model_type="llama", **TINY), **extra)
    batch = PairCollator(pad_token_id=0, row_tokens=24)(PAIRS)
    results = []
    for compile in (False, True):
        module = built(AlignmentModule(TDPO(), spec, compile=compile))
        perturb(module)
        loss = module(batch).loss
        loss.backward()
        results.append((loss, [p.grad for p in module.policy.parameters() if p.requires_grad]))
    (eager, eager_grads), (compiled, compiled_grads) = results
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for got, want in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert graphs() >= 2 and not counters["graph_break"], dict(counters["graph_break"])


def test_one_switch_in_yaml(model_dir):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(AlignmentModule, "model")
    config = parser.parse_object({"model": {"objective": {"class_path": "lit_align.objectives.DPO"},
                                            "policy": {"path": model_dir}, "compile": True}})
    module = parser.instantiate_classes(config).model
    assert module.compile_layers is True and module.hparams["compile"] is True
    assert callable(module.compile)  # nn.Module's method, not shadowed by the switch
