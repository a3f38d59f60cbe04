"""LatentThoughtModule: injection, the defect switches, the variance prior, a Trainer fit and the CLI."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentError

from lit_align.cli import main
from lit_align.models.policy import PolicySpec
from lit_align.thinker import (
    AssistantLM,
    BlockPrior,
    GaussianThoughts,
    LatentThoughtModule,
    ModularArithmeticData,
    SamplingSettings,
    SelfConsistency,
    ThoughtLoss,
)
from lit_align.thinker import cli as thinker_cli
from lit_align.thinker.injection import control, inject
from lit_align.thinker.task import ArithmeticSettings
from lit_align.trainer import AlignmentTrainer

TINY_TASK = ArithmeticSettings(steps=3, hidden_size=32, intermediate_size=64, layers=1, heads=2, pretrain_steps=5)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lta_task")
    data = ModularArithmeticData(str(workdir), TINY_TASK, num_train=32, num_val=16, batch_size=8, eval_batch_size=8)
    data.prepare_data()
    return workdir


def data(task_dir, **kwargs) -> ModularArithmeticData:
    module = ModularArithmeticData(str(task_dir), TINY_TASK, num_train=32, num_val=16, batch_size=8,
                                   eval_batch_size=8, **kwargs)
    module.setup("fit")
    return module


def thinker(task_dir, **kwargs) -> LatentThoughtModule:
    torch.manual_seed(0)
    module = LatentThoughtModule(PolicySpec(path=str(task_dir / "base")), **kwargs)
    module.configure_model()
    return module.train()


def test_inject_places_thoughts_in_their_slots_only():
    embeddings, thoughts = torch.zeros(2, 6, 3), torch.randn(2, 2, 3, requires_grad=True)
    slots = torch.tensor([[1, 2], [3, 4]])
    out = inject(embeddings, slots, thoughts)
    assert torch.equal(out[0, 1:3], thoughts[0]) and torch.equal(out[1, 3:5], thoughts[1])
    assert out[0, [0, 3, 4, 5]].abs().sum() == 0 and out[1, [0, 1, 2, 5]].abs().sum() == 0
    out.sum().backward()
    assert torch.equal(thoughts.grad, torch.ones_like(thoughts))
    assert control(thoughts, "placeholder") is None
    assert torch.equal(control(thoughts, "shuffled"), thoughts.roll(1, 0))


def focus_gradient(module: LatentThoughtModule, batch) -> tuple[float, float]:
    focus = module.loss(module(batch)).parts["focus"]
    focus.backward()
    grads = [p.grad.abs().max().item() for p in module.parameters() if p.requires_grad and p.grad is not None]
    return focus.item(), max(grads, default=0.0)


def test_authors_block_mode_gives_a_constant_focus_loss_without_gradient(task_dir):
    """Defect (2): the anchor and every step end hold the same token and the block sees no positions: the gradient
    is float32 round-off (seen up to 1.6e-6, depending on the initial weights), the positional one's above 1e-4."""
    batch = next(iter(data(task_dir).train_dataloader()))
    torch.manual_seed(0)
    module = thinker(task_dir, generator=BlockPrior(positional=False), loss=ThoughtLoss(sft=0, focus=1, align=0))
    value, gradient = focus_gradient(module, batch)
    assert value == pytest.approx(math.log(TINY_TASK.steps), abs=1e-5)
    assert gradient < 1e-5


def test_leak_free_positional_focus_has_a_gradient(task_dir):
    batch = next(iter(data(task_dir).train_dataloader()))
    module = thinker(task_dir, generator=BlockPrior(positional=True), loss=ThoughtLoss(sft=0, focus=1, align=0),
                     gold_steps_in_prompt=False)
    value, gradient = focus_gradient(module, batch)
    assert value != pytest.approx(math.log(TINY_TASK.steps), abs=1e-3)
    assert gradient > 1e-4


def test_gold_steps_reach_the_training_thoughts_only_when_switched_on(task_dir):
    """Defect (1): with the authors' prompt, training thoughts depend on the gold steps, unlike test thoughts."""
    batch = next(iter(data(task_dir).train_dataloader()))
    altered = dict(batch, gen_steps_ids=batch["gen_steps_ids"].clone())
    altered["gen_steps_ids"].scatter_(1, batch["step_ends"] - 1, 3)  # every gold step replaced by the value "0"
    for gold, differs in ((True, True), (False, False)):
        module = thinker(task_dir, generator=BlockPrior(positional=True), gold_steps_in_prompt=gold)
        with torch.no_grad():
            assert (not torch.allclose(module(batch).thoughts, module(altered).thoughts)) == differs
            test_thoughts = module.eval()(batch).thoughts
            assert torch.allclose(test_thoughts, module.eval()(altered).thoughts)


def test_variance_prior_samples_in_training_and_uses_the_mean_greedily(task_dir):
    batch = next(iter(data(task_dir).train_dataloader()))
    module = thinker(task_dir, variance_prior=GaussianThoughts(init_logvar=-2.0),
                     loss=ThoughtLoss(sft=1, focus=0, align=0, variance=0.1))
    first, second = module(batch), module(batch)
    assert not torch.allclose(first.thoughts, second.thoughts)
    assert first.logvar is not None and torch.allclose(first.logvar, torch.full_like(first.logvar, -2.0))
    assert "variance" in module.loss(first).parts
    module.eval()
    assert torch.allclose(module(batch).thoughts, module(batch).thoughts)
    _, drawn, _ = module.generate_thoughts(batch["gen_ids"].repeat_interleave(2, 0),
                                           batch["gen_mask"].repeat_interleave(2, 0),
                                           batch["gen_slots"].repeat_interleave(2, 0), sample=True)
    assert not torch.allclose(drawn[0], drawn[1])


def test_trainer_fit_trains_generator_and_projection_only_and_logs_accuracy(task_dir, tmp_path):
    L.seed_everything(0)
    datamodule = ModularArithmeticData(str(task_dir), TINY_TASK, num_train=32, num_val=16, batch_size=8,
                                       eval_batch_size=8)
    module = LatentThoughtModule(PolicySpec(path=str(task_dir / "base")), BlockPrior(positional=True),
                                 gold_steps_in_prompt=False, variance_prior=GaussianThoughts(),
                                 thought_init="placeholder")
    callback = SelfConsistency(SamplingSettings(k=3, max_new_tokens=4), max_batches=1)
    trainer = AlignmentTrainer(max_steps=4, val_check_interval=4, check_val_every_n_epoch=None, logger=False,
                               default_root_dir=tmp_path, enable_progress_bar=False, callbacks=[callback],
                               enable_model_summary=False, num_sanity_val_steps=0)
    module.configure_model()
    base_before = {k: v.clone() for k, v in module.base.state_dict().items()}
    projection_before = module.projection.weight.detach().clone()
    assert not module.initialised
    trainer.fit(module, datamodule)
    assert module.initialised
    assert all(torch.equal(v, module.base.state_dict()[k]) for k, v in base_before.items())
    assert not torch.equal(projection_before, module.projection.weight)
    metrics = trainer.callback_metrics
    assert {"train/sft", "train/focus", "train/align", "val/sft", "val/acc_vote", "val/vote_gain"} <= set(metrics)
    assert 0.0 <= metrics["val/acc_vote"] <= 1.0
    assert set(callback.last) == {"acc_greedy", "acc_sample", "acc_vote", "vote_gain"}


def test_assistant_lm_generator_and_vocabulary_check(task_dir):
    base = LatentThoughtModule(PolicySpec(path=str(task_dir / "base")))
    base.configure_model()
    vocab = base.base.config.vocab_size
    small = dict(model_type="llama", vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=1)
    module = thinker(task_dir, generator=AssistantLM(PolicySpec(config=small)))
    assert module.projection.in_features == 16
    batch = next(iter(data(task_dir).train_dataloader()))
    module.loss(module(batch)).loss.backward()
    assert module.projection.weight.grad is not None
    assert all(p.grad is None for p in module.generator.parameters())
    with pytest.raises(ValueError, match="vocabulary"):
        thinker(task_dir, generator=AssistantLM(PolicySpec(config=dict(small, vocab_size=vocab + 1))))


def test_cli_runs_the_shipped_config(task_dir, tmp_path):
    """``lit-align fit`` runs the thinker's config (its ``model.class_path`` routes it to the thinker's CLI)."""
    main([
        "fit", "--config", "configs/lta_thinker.yaml",
        f"--data.init_args.workdir={task_dir}", "--data.init_args.num_train=16", "--data.init_args.num_val=8",
        "--data.init_args.batch_size=8", "--data.init_args.eval_batch_size=8",
        *(f"--data.init_args.task.{k}={v}" for k, v in vars(TINY_TASK).items()),
        f"--model.base.path={task_dir / 'base'}", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false", "--trainer.callbacks=[]",
    ])


@pytest.mark.parametrize(("setting", "line"), [
    ("--model.loss.sft=-0.5", "error: model.loss.sft=-0.5: a loss weight must be ≥ 0 (0 leaves the term out)"),
    ("--data.init_args.num_thoughts=0", "error: data.num_thoughts=0: expected a PositiveInt (v>0)"),
])
def test_bad_thinker_setting_is_one_line_with_status_2(capsys, tmp_path, setting, line):
    args = ["fit", "--config", "configs/lta_thinker.yaml", f"--trainer.default_root_dir={tmp_path}", setting]
    for entry in (main, thinker_cli.main):
        with pytest.raises(SystemExit) as exit_info:
            entry(args)
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip() == line
    with pytest.raises((ValueError, ArgumentError), match=line.split("=")[0].rsplit(".", 1)[1]):
        thinker_cli.main([*args, "--debug"])  # the traceback, not the line


def test_answer_bos_puts_the_bos_embedding_in_the_mean_answer_embedding(task_dir):
    """The authors tokenise the answer with ``tokenizer(ans_str)`` (special tokens on: BOS), so their ē, the mean
    answer embedding that picks L_focus's positive, averages the BOS embedding in; ``answer_bos=True`` does too."""
    plain, authors = data(task_dir), data(task_dir, answer_bos=True)
    batch, authors_batch = next(iter(plain.val_dataloader())), next(iter(authors.val_dataloader()))
    bos = plain.tokenizer.bos_token_id
    assert bos is not None and (authors_batch["answer_ids"][:, 0] == bos).all()
    assert (batch["answer_ids"] != bos).all()
    module = thinker(task_dir)
    embed = module.base.get_input_embeddings()
    with torch.no_grad():
        ours, theirs = module(batch).answer_embedding, module(authors_batch).answer_embedding
        for row in range(len(batch["answer"])):
            answer = batch["answer_ids"][row][batch["answer_mask"][row].bool()]
            torch.testing.assert_close(ours[row], embed(answer).mean(0))
            with_bos = torch.cat([torch.tensor([bos]), answer])
            torch.testing.assert_close(theirs[row], embed(with_bos).mean(0))
    assert not torch.allclose(ours, theirs)
