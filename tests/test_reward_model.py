"""The reward model: the Bradley–Terry loss against a float64 loop, the classifier built from a causal LM, a real fit
whose held-out accuracy rises from chance on a learnable preference, its save read back by
``SequenceClassifierReward``, and the command line of docs/online.md."""

from __future__ import annotations

import math
import random
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoModelForCausalLM

from lit_align.data import PreferenceDataModule
from lit_align.data.collator import PairCollator
from lit_align.data.layouts import BadRow, split_text
from lit_align.errors import ConfigError
from lit_align.online import ClassifierSpec, RewardModel, SequenceClassifierReward, bradley_terry_loss, build_classifier
from lit_align.trainer import AlignmentTrainer
from tests.conftest import TINY_LLAMA, hh_rows, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
MARKER = "zebra"


def naive_bradley_terry(chosen: list[float], rejected: list[float], eta: float) -> tuple[list[float], list[float],
                                                                                          list[float]]:
    """Per-pair ``−log σ(r_w − r_l) + η (r_w + r_l)²`` and its derivatives, one pair at a time in float64."""
    losses, d_chosen, d_rejected = [], [], []
    for r_w, r_l in zip(chosen, rejected, strict=True):
        sigma = 1.0 / (1.0 + math.exp(-(r_w - r_l)))
        losses.append(-math.log(sigma) + eta * (r_w + r_l) ** 2)
        d_chosen.append(-(1.0 - sigma) + 2 * eta * (r_w + r_l))
        d_rejected.append((1.0 - sigma) + 2 * eta * (r_w + r_l))
    return losses, d_chosen, d_rejected


@pytest.mark.parametrize("eta", [0.0, 0.01, 0.5])
def test_bradley_terry_against_a_float64_loop(eta):
    generator = torch.Generator().manual_seed(0)
    chosen = torch.cat([torch.randn(16, generator=generator) * 3, torch.tensor([30.0, -30.0, 0.0])]).double()
    rejected = torch.cat([torch.randn(16, generator=generator) * 3, torch.tensor([-30.0, 30.0, 0.0])]).double()
    chosen.requires_grad_(True)
    rejected.requires_grad_(True)
    losses, out_chosen, out_rejected = bradley_terry_loss(chosen, rejected, eta)
    expected, d_chosen, d_rejected = naive_bradley_terry(chosen.tolist(), rejected.tolist(), eta)
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    losses.sum().backward()
    torch.testing.assert_close(chosen.grad, torch.tensor(d_chosen, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rejected.grad, torch.tensor(d_rejected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert not out_chosen.requires_grad and torch.equal(out_chosen, chosen.detach())
    assert not out_rejected.requires_grad and torch.equal(out_rejected, rejected.detach())
    assert losses[-1].item() == pytest.approx(math.log(2))  # equal rewards: ln 2


def test_refusals():
    with pytest.raises(ConfigError, match="center_coefficient"):
        bradley_terry_loss(torch.zeros(2), torch.zeros(2), -0.1)
    with pytest.raises(ConfigError, match="exactly one"):
        ClassifierSpec()
    with pytest.raises(ConfigError, match="exactly one"):
        ClassifierSpec(path="x", config={"model_type": "llama"})
    with pytest.raises(ConfigError, match="model_type"):
        ClassifierSpec(config={"hidden_size": 8})
    with pytest.raises(ConfigError, match="center_coefficient"):
        RewardModel(ClassifierSpec(path="x"), center_coefficient=-1.0)


def test_built_from_a_causal_lm(model_dir):
    """The SFT model's decoder is read as it is; the score head is new, the same for the same ``init_seed``."""
    module = RewardModel(ClassifierSpec(path=model_dir, init_seed=3))
    module.configure_model()
    causal = AutoModelForCausalLM.from_pretrained(model_dir)
    assert type(module.model).__name__ == "LlamaForSequenceClassification" and module.model.config.num_labels == 1
    assert module.model.training
    for name, weight in causal.model.state_dict().items():
        assert torch.equal(module.model.model.state_dict()[name], weight), name
    again = build_classifier(ClassifierSpec(path=model_dir, init_seed=3))
    other = build_classifier(ClassifierSpec(path=model_dir, init_seed=4))
    assert torch.equal(again.score.weight, module.model.score.weight)
    assert not torch.equal(other.score.weight, module.model.score.weight)
    fresh = build_classifier(ClassifierSpec(config={**TINY_LLAMA, "vocab_size": 512}))
    assert fresh.config.num_labels == 1 and fresh.score.weight.shape == (1, 32)


def marked_rows() -> list[dict]:
    """The repository's HH pairs made into a learnable preference: of each pair's two responses, one picked at
    random gets the marker word among its first words and is the chosen one."""
    rng, rows = random.Random(0), []
    for row in hh_rows(300):
        try:
            prompt, first, second = split_text(row, "hh")
        except BadRow:
            continue
        if MARKER in first + second:
            continue
        chosen, rejected = (first, second) if rng.random() < 0.5 else (second, first)
        words = chosen.split(" ")
        at = rng.randint(1, min(6, len(words)))
        rows.append({"prompt": prompt, "chosen": " ".join([*words[:at], MARKER, *words[at:]]), "rejected": rejected})
    return rows


def make_trainer(root: Path, **kwargs) -> AlignmentTrainer:
    options = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=root)
    return AlignmentTrainer(**{**options, **kwargs})


def test_a_fit_learns_the_preference_and_reads_back(tmp_path, model_dir, tokenizer_dir):
    rows = marked_rows()
    train = write_jsonl(tmp_path / "train.jsonl", rows[:96])
    held_out = write_jsonl(tmp_path / "val.jsonl", rows[96:144])
    data = PreferenceDataModule(path=str(train), val_path=str(held_out), val_split="train", tokenizer=tokenizer_dir,
                                max_length=48, max_prompt_length=24, batch_size=8)
    save_dir = tmp_path / "reward_model"
    module = RewardModel(ClassifierSpec(path=model_dir), save_dir=str(save_dir),
                         optimizer=partial(torch.optim.AdamW, lr=3e-3, weight_decay=0.0))
    trainer = make_trainer(tmp_path / "run", max_epochs=5)
    before = trainer.validate(module, datamodule=data, verbose=False)[0]["val/rewards/accuracies"]
    trainer.fit(module, datamodule=data)
    after = trainer.validate(module, datamodule=data, verbose=False)[0]["val/rewards/accuracies"]
    assert len(data.val_set) == 48
    assert before < 0.7, f"the untrained model already tells the pairs apart ({before:.2f}): the test shows nothing"
    assert after > 0.85, f"held-out accuracy {after:.2f} after training (before: {before:.2f})"

    config = AutoConfig.from_pretrained(save_dir)
    assert config.num_labels == 1 and config.lit_align_template == "text" and config.pad_token_id == data.pad_token_id
    # The held-out pairs whole (training cut them to 48 tokens), those that fit the tiny Llama's 512 positions,
    # through the module and through the saved model.
    length = SequenceClassifierReward(str(save_dir)).encode
    kept = [row for row in rows[96:144] if len(data.tokenizer(row["prompt"])["input_ids"]) <= 256
            and max(map(len, length([row["prompt"]] * 2, [row["chosen"], row["rejected"]]))) <= 512]
    whole = PreferenceDataModule(path=str(write_jsonl(tmp_path / "whole.jsonl", kept)), split="train",
                                 val_fraction=0, tokenizer=tokenizer_dir, max_length=512, max_prompt_length=256)
    whole.setup()
    assert len(whole.train_set) == len(kept) >= 32 and not whole.report["train"]["rows"]["truncated"]
    module.eval()
    with torch.no_grad():
        batches = DataLoader(whole.train_set, batch_size=16, collate_fn=PairCollator(whole.pad_token_id))
        chosen, rejected = (torch.cat(side) for side in zip(*map(module.pair_rewards, batches), strict=True))
    reward_fn = SequenceClassifierReward(str(save_dir), batch_size=16)
    prompts = [row["prompt"] for row in kept]
    torch.testing.assert_close(reward_fn(prompts, [row["chosen"] for row in kept]), chosen, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(reward_fn(prompts, [row["rejected"] for row in kept]), rejected, atol=1e-4, rtol=1e-4)


def doc_config() -> str:
    text = (ROOT / "docs" / "online.md").read_text()
    return re.search(r"<!-- reward_model.yaml -->\n```yaml\n(.*?)```", text, re.S).group(1)


def test_the_documented_command_trains_and_saves(tmp_path, model_dir, tokenizer_dir, explicit_file):
    config = tmp_path / "reward_model.yaml"
    config.write_text(doc_config())
    save_dir = tmp_path / "hf_model"
    result = subprocess.run(
        [sys.executable, "-m", "lit_align", "fit", "--config", str(config),
         f"--model.classifier.path={model_dir}", f"--data.path={explicit_file}", f"--data.tokenizer={tokenizer_dir}",
         f"--model.save_dir={save_dir}", f"--trainer.default_root_dir={tmp_path / 'runs'}", "--trainer.max_steps=2",
         "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.accumulate_grad_batches=1",
         "--data.max_length=64", "--data.max_prompt_length=32"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    reward_fn = SequenceClassifierReward(str(save_dir))
    assert reward_fn(["Question 1: how was the film?"], [" It was great."]).shape == (1,)


def test_a_save_dir_that_holds_something_is_refused_before_the_first_step(tmp_path, model_dir, tokenizer_dir,
                                                                          explicit_file):
    save_dir = tmp_path / "hf_model"
    save_dir.mkdir()
    (save_dir / "config.json").write_text("{}")
    data = PreferenceDataModule(path=str(explicit_file), tokenizer=tokenizer_dir, max_length=64, max_prompt_length=32)
    trainer = make_trainer(tmp_path / "run", max_steps=2)
    with pytest.raises(ConfigError, match="model.save_dir.*not empty"):
        trainer.fit(RewardModel(ClassifierSpec(path=model_dir), save_dir=str(save_dir)), datamodule=data)
    assert trainer.global_step == 0 and (save_dir / "config.json").read_text() == "{}"
