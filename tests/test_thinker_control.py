"""The trained-placeholder control (NoGenerator): it trains, and its slots carry nothing of the question."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_align.models.policy import PolicySpec
from lit_align.thinker import BlockPrior, LatentThoughtModule, ModularArithmeticData, NoGenerator, ThoughtLoss
from lit_align.thinker.task import ArithmeticSettings
from lit_align.trainer import AlignmentTrainer

TINY_TASK = ArithmeticSettings(steps=3, hidden_size=32, intermediate_size=64, layers=1, heads=2, pretrain_steps=5)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lta_control")
    ModularArithmeticData(str(workdir), TINY_TASK, num_train=32, num_val=16, batch_size=8).prepare_data()
    return workdir


def datamodule(task_dir) -> ModularArithmeticData:
    data = ModularArithmeticData(str(task_dir), TINY_TASK, num_train=32, num_val=16, batch_size=8, eval_batch_size=8)
    data.setup("fit")
    return data


def control(task_dir, generator=None) -> LatentThoughtModule:
    torch.manual_seed(0)
    module = LatentThoughtModule(PolicySpec(path=str(task_dir / "base")), generator or NoGenerator(),
                                 ThoughtLoss(sft=1.0, focus=0.0, align=0.0), gold_steps_in_prompt=False,
                                 thought_init="placeholder", optimizer=lambda p: torch.optim.AdamW(p, lr=3e-2))
    module.configure_model()
    return module


def test_the_empty_slot_control_trains_its_slot_vectors_only(task_dir, tmp_path):
    L.seed_everything(0)
    module = control(task_dir)
    assert not list(module.generator.parameters())
    assert {name for name, p in module.named_parameters() if p.requires_grad} == {"projection.weight",
                                                                                 "projection.bias"}
    base_before = {k: v.clone() for k, v in module.base.state_dict().items()}
    data = datamodule(task_dir)
    batch = next(iter(data.train_dataloader()))
    module.on_train_batch_start(batch, 0)  # the slots start at the placeholder embedding, as in the fit below
    start = module.train()(batch).thoughts.detach().clone()
    placeholder = module.base.get_input_embeddings().weight[batch["input_ids"][0, batch["thought_slots"][0, 0]]]
    assert torch.allclose(module.projection.bias, placeholder)
    trainer = AlignmentTrainer(max_steps=8, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                               enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                               default_root_dir=tmp_path)
    trainer.fit(module, data)
    assert all(torch.equal(v, module.base.state_dict()[k]) for k, v in base_before.items())
    trained = module.train()(batch).thoughts.detach()
    assert (trained - start).abs().max() > 1e-3  # the slot vectors moved
    assert torch.isfinite(trainer.callback_metrics["train/sft_epoch"])


def test_the_empty_slot_control_slots_carry_no_generator_output(task_dir):
    """Every question gets the same vector in slot j, ``W e(⟨t_j⟩) + b``, in training, evaluation and sampling;
    the one-block generator, by contrast, gives different questions different thoughts."""
    data = datamodule(task_dir)
    first, second = next(iter(data.train_dataloader())), next(iter(data.val_dataloader()))
    assert not torch.equal(first["gen_ids"][0], first["gen_ids"][1])  # different questions
    module = control(task_dir)
    queries = first["gen_ids"][0, first["gen_slots"][0]]
    expected = module.projection(module.base.get_input_embeddings()(queries))
    with torch.no_grad():
        for batch, mode in ((first, True), (second, True), (first, False), (second, False)):
            thoughts = module.train(mode)(batch).thoughts
            assert torch.allclose(thoughts, expected.expand_as(thoughts), atol=1e-6)
        _, sampled, _ = module.generate_thoughts(second["gen_ids"].repeat_interleave(3, 0),
                                                 second["gen_mask"].repeat_interleave(3, 0),
                                                 second["gen_slots"].repeat_interleave(3, 0), sample=True)
        assert torch.allclose(sampled, expected.expand_as(sampled), atol=1e-6)
        generated = control(task_dir, BlockPrior(positional=True)).eval()(first).thoughts
    assert not torch.allclose(generated[0], generated[1], atol=1e-4)


def test_the_lta_table_judges_generators_against_the_trained_placeholder():
    from tools.lta_table import CONTROL, claims, table

    def accuracy(x: float) -> dict:
        return {"acc_greedy": x, "acc_sample": x, "acc_vote": x, "vote_gain": 0.0}

    floor = [0.15, 0.14, 0.16]
    results = [{"name": CONTROL, "seed": s, "generated": accuracy(x)} for s, x in enumerate(floor)]
    results += [{"name": "sft", "seed": s, "generated": accuracy(x + 0.30), "shuffled": accuracy(x)}
                for s, x in enumerate(floor)]
    results += [{"name": "placeholder", "seed": s, "placeholder": accuracy(0.02)} for s in range(3)]
    judged = {claim: comparison for claim, comparison, _ in claims(results, 1 / 7)}
    fair = judged["`sft` beats the trained placeholder (no generator; the fair floor)"]
    assert fair.verdict == "holds" and fair.test == "paired"
    assert judged["`sft` beats the untrained placeholder prompt"].verdict == "holds"
    assert judged[f"`{CONTROL}` beats chance (0.143)"].verdict == "not shown"
    assert not any(claim.startswith(f"`{CONTROL}`: its own") for claim in judged)  # one vector for all: no shuffle
    text = table(results, chance=1 / 7)
    assert f"| `{CONTROL}`: no generator" in text and f"| `{CONTROL}` |" not in text  # no gap row for the control
