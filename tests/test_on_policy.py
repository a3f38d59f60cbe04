"""On-policy training (issue 29, items 1 and 3): prompts from every pair layout, a fit on pairs sampled from the
current policy whose reward rises, a resume that reaches the uninterrupted run's weights, and the offline store
refused. Real tiny models, real Trainer runs (the DDP run: ``tests/test_on_policy_ddp.py``)."""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_align.errors import ConfigError
from lit_align.eval.generation import sample_continuations
from lit_align.models.policy import LoraSettings, PolicySpec
from lit_align.objectives import DPO, FDPO
from lit_align.online.on_policy import OnPolicyModule
from lit_align.online.pairs import PairBuilder
from lit_align.online.prompts import PromptDataModule
from lit_align.reference import DisabledAdapter, OfflineStore
from tests.conftest import explicit_rows, write_jsonl
from tests.test_module import make_trainer

PROMPTS = [row["prompt"] for row in explicit_rows(24)]


class LetterShare:
    """A verifiable reward: the share of a response's characters that are ``letter`` (0 for an empty one)."""

    def __init__(self, letter: str = "e") -> None:
        self.letter = letter

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.tensor([r.count(self.letter) / len(r) if r else 0.0 for r in responses], dtype=torch.float64)


class Steps(Callback):
    """Each step's loss (None when the step had no pair) and the prompts' keys."""

    def __init__(self) -> None:
        self.losses: list[float | None] = []
        self.keys: list[list[int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(None if outputs is None else outputs["loss"].item())
        self.keys.append(batch["example_key"].tolist())


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])


def prompt_data(path: Path, tokenizer_dir: str, **kwargs) -> PromptDataModule:
    options = dict(tokenizer=tokenizer_dir, max_length=64, max_prompt_length=32, batch_size=4, val_fraction=0.0)
    return PromptDataModule(path=str(path), **{**options, **kwargs})


def module(model_dir: str, objective=None, policy_spec: PolicySpec | None = None, **kwargs) -> OnPolicyModule:
    options = dict(reward_fn=LetterShare(), samples_per_prompt=4, max_new_tokens=12, sampling_seed=0,
                   optimizer=partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.0))
    return OnPolicyModule(objective or DPO(beta=0.1), policy_spec or PolicySpec(path=model_dir),
                          **{**options, **kwargs})


def mean_reward(model, tokenizer, seed: int = 7) -> float:
    samples = sample_continuations(model, tokenizer, PROMPTS[:16], num_samples=4, max_new_tokens=12, seed=seed)
    texts = [text for group in samples for text in group]
    return LetterShare()(PROMPTS, texts).mean().item()


def test_prompts_from_every_layout(tmp_path, tokenizer_dir):
    """A prompt string, a prompt conversation, a conversation cut before its last answer, an HH transcript and a
    preference row (its responses ignored) each give one prompt; a row of texts that marks no prompt and an empty
    prompt are counted and skipped. Prompts are left-padded; the reward reads the user's text."""
    rows = [
        {"prompt": "How was the film?"},
        {"prompt": [{"role": "user", "content": "Name a colour."}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Pick a number."}, {"role": "assistant", "content": "Seven"}]},
        {"chosen": "\n\nHuman: Is it late?\n\nAssistant: Yes.", "rejected": "\n\nHuman: Is it late?\n\nAssistant: No."},
        {"prompt": "Rate it.", "chosen": " Good.", "rejected": " Bad."},
        {"chosen": "The sky is blue.", "rejected": "The sky is red."},
        {"prompt": "   "},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = prompt_data(path, tokenizer_dir, batch_size=8, seed=1)
    data.setup("fit")
    # in one file, the texts without a prompt are read as the pairs' module reads them: explicit, lacking one
    assert data.report["train"]["skipped"] == {"missing_field:prompt": 1, "empty_prompt": 1}
    assert sorted(data.report["train"]["layouts"].items()) == [("conversational", 2), ("explicit", 4), ("hh", 1)]
    (batch,) = list(data.train_dataloader())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = {text: (ids[mask.bool()].tolist(), mask) for text, ids, mask in
             zip(batch["prompt_text"], batch["input_ids"], batch["attention_mask"], strict=True)}
    assert set(texts) == {"How was the film?", "Name a colour.", "Pick a number.", "Rate it.",
                          "\n\nHuman: Is it late?\n\nAssistant:"}
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                          {"role": "user", "content": "Pick a number."}], tokenize=False,
                                         add_generation_prompt=True)
    assert texts["Pick a number."][0] == tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert chat.endswith("<|user|>Pick a number.</s><|assistant|>")
    assert texts["Rate it."][0] == tokenizer("Rate it.")["input_ids"]  # as a text pair's prompt: with BOS
    for _, mask in texts.values():  # left padding: every prompt ends at the last column
        assert mask[-1] == 1 and mask.tolist() == sorted(mask.tolist())


def test_on_policy_fit_raises_the_reward(tmp_path, model_dir, tokenizer_dir, prompts_file):
    """Online DPO with a verifiable reward (the share of "e" in the response) on the tiny random Llama: the reward
    of fresh samples from the trained policy is well above that of the initial one, with the same seeds."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    before = mean_reward(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer)
    steps = Steps()
    policy = module(model_dir)
    make_trainer(tmp_path, 24, callbacks=[steps]).fit(policy, prompt_data(prompts_file, tokenizer_dir))
    after = mean_reward(policy.policy, tokenizer)
    assert after > 1.5 * before and after > before + 0.04, (before, after)
    assert all(loss is not None and math.isfinite(loss) for loss in steps.losses)
    assert policy.skipped_steps == 0
    epoch = sorted(key for keys in steps.keys[:6] for key in keys)  # 24 prompts, 4 a step: each once an epoch
    assert len(set(epoch)) == 24


def test_resume_mid_epoch_reaches_the_same_weights(tmp_path, model_dir, tokenizer_dir, prompts_file):
    """Killed at step 4 (mid-epoch) and resumed from its checkpoint, a run samples the same responses and takes
    the same steps as the uninterrupted run: the same losses, bit for bit, and the same weights (f-DPO, SGD with
    momentum, across an epoch boundary)."""
    def run(root: Path, steps: int, resume: str | None = None) -> tuple[OnPolicyModule, Steps]:
        recorder = Steps()
        checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", filename="{step}", every_n_train_steps=4,
                                      save_top_k=-1)
        policy = module(model_dir, FDPO(divergence="js"), optimizer=partial(torch.optim.SGD, lr=0.5, momentum=0.5))
        make_trainer(root, steps, callbacks=[recorder, checkpoints], enable_checkpointing=True).fit(
            policy, prompt_data(prompts_file, tokenizer_dir), ckpt_path=resume)
        return policy, recorder

    whole, full = run(tmp_path / "whole", 9)
    resumed, rest = run(tmp_path / "resumed", 9, str(tmp_path / "whole" / "checkpoints" / "step=4.ckpt"))
    assert rest.losses == full.losses[4:] and rest.keys == full.keys[4:]
    assert full.losses[0] == pytest.approx(math.log(2)) and full.losses[-1] != full.losses[0]
    for (name, a), b in zip(whole.policy.state_dict().items(), resumed.policy.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_a_step_without_pairs_is_skipped(tmp_path, model_dir, tokenizer_dir, prompts_file):
    """A reward that ties every response gives no pair: each step is counted and skipped, the weights stay."""
    policy = module(model_dir, reward_fn=lambda prompts, responses: torch.zeros(len(responses)),
                    pairs=PairBuilder("all_above_margin", 0.0))
    initial = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    make_trainer(tmp_path, 3).fit(policy, prompt_data(prompts_file, tokenizer_dir))
    assert policy.skipped_steps == 3
    for name, value in policy.policy.state_dict().items():
        torch.testing.assert_close(value, initial[name], atol=0, rtol=0, msg=name)


def test_the_offline_store_and_single_samples_are_refused(tmp_path, model_dir, tokenizer_dir, prompts_file):
    with pytest.raises(ConfigError, match=r"^model.reference='OfflineStore': FrozenCopy or DisabledAdapter"):
        module(model_dir, reference=OfflineStore(str(tmp_path / "store")))
    with pytest.raises(ConfigError, match="samples_per_prompt=1"):
        module(model_dir, samples_per_prompt=1)
    with pytest.raises(ConfigError, match="val_fraction"):
        prompt_data(prompts_file, tokenizer_dir, val_fraction=0.1)._tokenised_splits()


def test_fdpo_objective_trains_on_policy(tmp_path, model_dir, tokenizer_dir, prompts_file):
    """Any objective: f-DPO (α-divergence) against the frozen copy, pairs every pair above a margin."""
    policy = OnPolicyModule(FDPO(divergence="alpha", beta=0.5), PolicySpec(path=model_dir),
                            reward_fn=LetterShare(), samples_per_prompt=3, pairs=PairBuilder("all_above_margin", 0.01),
                            max_new_tokens=8)
    steps = Steps()
    make_trainer(tmp_path, 2, callbacks=[steps]).fit(policy, prompt_data(prompts_file, tokenizer_dir))
    assert all(loss is not None and math.isfinite(loss) for loss in steps.losses)


def test_lora_policy_against_its_disabled_adapter(tmp_path, model_dir, tokenizer_dir, prompts_file):
    """A LoRA policy samples through peft and trains against the adapter-disabled base (the default reference):
    at step 0 policy and reference agree, so DPO's loss is log 2; then the adapter moves."""
    policy = module(model_dir, policy_spec=PolicySpec(path=model_dir, lora=LoraSettings(r=4, alpha=8)))
    steps = Steps()
    make_trainer(tmp_path, 3, callbacks=[steps]).fit(policy, prompt_data(prompts_file, tokenizer_dir))
    assert isinstance(policy.reference, DisabledAdapter)
    assert steps.losses[0] == pytest.approx(math.log(2), abs=1e-6) and steps.losses[-1] != steps.losses[0]
