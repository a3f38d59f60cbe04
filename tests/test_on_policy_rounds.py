"""Iterative rounds of on-policy training (issue 29, item 1): each epoch samples a whole round's pairs from the
policy as it stands at the round's start, then trains on them; the reward rises over rounds; a run killed inside a
round (or at its end) and resumed reaches the uninterrupted run's weights bit for bit; the round's pairs survive a
checkpoint; a run without the per-epoch reload is refused. Real tiny models, real Trainer runs (DDP:
``tests/test_on_policy_ddp.py``)."""

from __future__ import annotations

import copy
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_align.errors import ConfigError
from lit_align.objectives import FDPO
from lit_align.online.prompts import pair_lengths, prompt_lengths
from lit_align.online.rounds import SampledRound, sample_round
from tests.conftest import write_jsonl
from tests.test_module import make_trainer
from tests.test_on_policy import PROMPTS, mean_reward, module, prompt_data


class RoundSteps(Callback):
    """Per training step: the loss, the round the module holds, and the pairs' keys; the policy at each epoch's
    first step (after the round was sampled, before any step of it)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.rounds: list[int] = []
        self.keys: list[list[int]] = []
        self.starts: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0 and trainer.current_epoch not in self.starts:
            self.starts[trainer.current_epoch] = copy.deepcopy(pl_module.policy.state_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].item())
        self.rounds.append(pl_module.round.index)
        self.keys.append(batch["example_key"].tolist())


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])


def iterative(model_dir: str, **kwargs):
    return module(model_dir, iterative=True, **kwargs)


def fit(root: Path, policy, data, epochs: int, callbacks=(), resume: str | None = None, **kwargs):
    trainer = make_trainer(root, -1, max_epochs=epochs, reload_dataloaders_every_n_epochs=1,
                           callbacks=list(callbacks), **kwargs)
    trainer.fit(policy, data, ckpt_path=resume)
    return trainer


def test_rounds_train_on_pairs_sampled_at_each_rounds_start(tmp_path, model_dir, tokenizer_dir, prompts_file):
    """Three rounds over 24 prompts (4 samples each, best against worst): each epoch trains on one round, whose
    pairs are exactly what the policy at the round's start samples (re-sampled here from the weights recorded
    before the round's first step); the reward of fresh samples rises."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    policy, data, steps = iterative(model_dir), prompt_data(prompts_file, tokenizer_dir), RoundSteps()
    before = mean_reward(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer)
    fit(tmp_path, policy, data, 3, [steps])
    assert steps.rounds == [0] * 6 + [1] * 6 + [2] * 6  # 24 pairs a round (no ties), 4 a step
    assert all(math.isfinite(loss) for loss in steps.losses)
    assert mean_reward(policy.policy, tokenizer) > before + 0.04
    final = policy.round
    policy.policy.load_state_dict(steps.starts[2])  # the weights round 2 was sampled from
    prompts = data._prompt_loader(data._order(data.train_set, prompt_lengths, None))
    prompts.sampler.set_epoch(2)
    again = sample_round(policy, prompts, 2)
    assert again.pairs == final.pairs and len(final.pairs) == 24
    assert sorted(key for keys in steps.keys[12:] for key in keys) == sorted(p["example_key"] for p in final.pairs)
    policy.policy.load_state_dict(steps.starts[1])  # other weights sample other pairs: the check can fail
    assert sample_round(policy, prompts, 2).pairs != final.pairs


@pytest.mark.parametrize("stop", [8, 6], ids=["inside_a_round", "at_a_rounds_end"])
def test_resume_reaches_the_same_weights(tmp_path, model_dir, tokenizer_dir, prompts_file, stop):
    """Killed at step 8 (inside round 1: its pairs come from the checkpoint) or 6 (round 0's last step: round 1 is
    sampled from the restored weights) and resumed: the same losses and weights, bit for bit."""

    def run(root: Path, resume: str | None = None):
        steps = RoundSteps()
        checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", filename="{step}", every_n_train_steps=2,
                                      save_top_k=-1)
        policy = iterative(model_dir, objective=FDPO(divergence="js"),
                           optimizer=partial(torch.optim.SGD, lr=0.5, momentum=0.5))
        fit(root, policy, prompt_data(prompts_file, tokenizer_dir), 2, [steps, checkpoints], resume,
            enable_checkpointing=True)
        return policy, steps

    whole, full = run(tmp_path / "whole")
    resumed, rest = run(tmp_path / "resumed", str(tmp_path / "whole" / "checkpoints" / f"step={stop}.ckpt"))
    assert rest.losses == full.losses[stop:] and rest.keys == full.keys[stop:] and len(full.losses) == 12
    for (name, a), b in zip(whole.policy.state_dict().items(), resumed.policy.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_a_round_survives_its_checkpoint_state():
    pairs = [{"prompt_ids": [1, 5], "chosen_ids": [7, 2], "rejected_ids": [], "example_key": -3},
             {"prompt_ids": [1], "chosen_ids": [9, 9, 2], "rejected_ids": [4], "example_key": 11}]
    state = SampledRound(3, pairs).state_dict()
    assert all(value.dtype == torch.long for value in state.values())  # tensors: read back weights-only
    assert SampledRound.from_state_dict(state) == SampledRound(3, pairs)


def test_rounds_need_the_per_epoch_reload_and_a_pair(tmp_path, model_dir, tokenizer_dir, prompts_file):
    """Without the per-epoch reload, a refusal naming the setting; a reward that ties every response, a one-line
    error (lit-align's own ValueError) instead of an epoch with nothing to train on."""
    with pytest.raises(ConfigError, match=r"^trainer.reload_dataloaders_every_n_epochs=0: 1 with model.iterative"):
        make_trainer(tmp_path, 2).fit(iterative(model_dir), prompt_data(prompts_file, tokenizer_dir))
    ties = iterative(model_dir, reward_fn=lambda prompts, responses: torch.zeros(len(responses)))
    with pytest.raises(ValueError, match=r"^round 0 made no pair from 96 samples: every prompt's responses tie"):
        fit(tmp_path, ties, prompt_data(prompts_file, tokenizer_dir), 1)


def test_rounds_group_their_pairs_by_length(tmp_path, model_dir, tokenizer_dir, prompts_file):
    """With ``group_by_length`` the round's pairs are ordered by their padded length in windows, the prompts by
    theirs: one round still trains on each of its pairs once."""
    steps = RoundSteps()
    data = prompt_data(prompts_file, tokenizer_dir, group_by_length=2)
    policy = iterative(model_dir)
    fit(tmp_path, policy, data, 1, [steps])
    assert sorted(key for keys in steps.keys for key in keys) == sorted(p["example_key"] for p in policy.round.pairs)
    assert data.train_order.lengths == pair_lengths(policy.round.pairs)
    assert prompt_lengths(data.train_set) == [len(ids) for ids in data.train_set["prompt_ids"]]
