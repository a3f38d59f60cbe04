"""The reward protocol and ``SequenceClassifierReward``: a tiny sequence-classification Llama saved to disk, scored
in batches against one forward per text rendered by hand."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from jsonargparse import ArgumentParser
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from lit_align.errors import ConfigError
from lit_align.online import RewardFn, SequenceClassifierReward, check_batch, checked_rewards
from lit_align.tasks.oracle import SentimentOracle
from tests.conftest import TINY_LLAMA

PROMPTS = ["How was the film?", "Tell me about the weather today, please.", "Hi", "What is two plus two?",
           "Describe a cat.", "Is it good?", "Name a colour."]
RESPONSES = [" It was great.", " Rainy, then sunny and very warm by the evening.", " Hello!", " Four.",
             " Soft, small and curious about everything in the house.", " Yes", " Blue"]


def classifier(tokenizer_dir: str, target: Path, num_labels: int = 1, pad_token_id: int | None = 0) -> str:
    torch.manual_seed(1)
    config = {k: v for k, v in TINY_LLAMA.items() if k != "model_type"}
    model = LlamaForSequenceClassification(LlamaConfig(vocab_size=512, pad_token_id=pad_token_id, bos_token_id=1,
                                                       eos_token_id=2, num_labels=num_labels, **config))
    torch.nn.init.normal_(model.score.weight, std=1.0)  # rewards of order one, so differences show
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(target)
    return str(target)


@pytest.fixture(scope="module")
def classifier_dir(tokenizer_dir, tmp_path_factory) -> str:
    return classifier(tokenizer_dir, tmp_path_factory.mktemp("classifier"))


def one_at_a_time(path: str, rows: list[list[int]], label: int = 0) -> torch.Tensor:
    model = LlamaForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return torch.stack([model(input_ids=torch.tensor([row])).logits[0, label] for row in rows])


def by_hand(tokenizer, template: str, system: str | None = None) -> list[list[int]]:
    """The conftest chat template (``<|role|>content</s>`` per message) written out, or the text plus EOS."""
    if template == "text":
        texts = [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)]
        return [ids + [tokenizer.eos_token_id] for ids in tokenizer(texts)["input_ids"]]
    head = f"<|system|>{system}</s>" if system else ""
    texts = [f"{head}<|user|>{p}</s><|assistant|>{r}</s>" for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("template", ["chat", "text"])
def test_batched_rewards_equal_one_forward_per_text(classifier_dir, template):
    reward = SequenceClassifierReward(classifier_dir, template=template, batch_size=3)
    rows = by_hand(reward.tokenizer, template)
    assert reward.encode(PROMPTS, RESPONSES) == rows
    rewards = reward(PROMPTS, RESPONSES)
    assert rewards.dtype == torch.float32 and rewards.shape == (len(PROMPTS),)
    torch.testing.assert_close(rewards, one_at_a_time(classifier_dir, rows), atol=1e-5, rtol=1e-5)
    assert rewards.std() > 0.1  # the texts are told apart


def test_auto_renders_a_conversation_when_the_tokenizer_has_a_chat_template(classifier_dir):
    reward = SequenceClassifierReward(classifier_dir)
    assert reward.encode(PROMPTS, RESPONSES) == by_hand(reward.tokenizer, "chat")
    system = SequenceClassifierReward(classifier_dir, system_prompt="Be brief.")
    assert system.encode(PROMPTS, RESPONSES) == by_hand(reward.tokenizer, "chat", "Be brief.")


def test_without_a_chat_template_auto_is_text_and_chat_is_refused(tokenizer_dir, tmp_path):
    path = classifier(tokenizer_dir, tmp_path / "plain")
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(path)
    (Path(path) / "chat_template.jinja").unlink(missing_ok=True)
    assert SequenceClassifierReward(path).encode(PROMPTS, RESPONSES) == by_hand(tokenizer, "text")
    with pytest.raises(ConfigError, match="no chat template"):
        SequenceClassifierReward(path, template="chat")(PROMPTS, RESPONSES)


def test_a_model_without_a_pad_id_pads_with_the_tokenizers(tokenizer_dir, tmp_path):
    path = classifier(tokenizer_dir, tmp_path / "nopad", pad_token_id=None)
    reward = SequenceClassifierReward(path, batch_size=4)
    rewards = reward(PROMPTS, RESPONSES)
    assert reward.model.config.pad_token_id == reward.tokenizer.pad_token_id
    torch.testing.assert_close(rewards, one_at_a_time(path, reward.encode(PROMPTS, RESPONSES)), atol=1e-5, rtol=1e-5)


def test_a_model_with_several_outputs_names_its_reward(tokenizer_dir, tmp_path):
    path = classifier(tokenizer_dir, tmp_path / "two", num_labels=2)
    with pytest.raises(ConfigError, match="has 2 outputs"):
        SequenceClassifierReward(path)(PROMPTS, RESPONSES)
    with pytest.raises(ConfigError, match="has 2 outputs"):
        SequenceClassifierReward(path, label=2)(PROMPTS, RESPONSES)
    reward = SequenceClassifierReward(path, label=1)
    rows = reward.encode(PROMPTS, RESPONSES)
    torch.testing.assert_close(reward(PROMPTS, RESPONSES), one_at_a_time(path, rows, label=1), atol=1e-5, rtol=1e-5)


def test_max_length_keeps_the_end_and_counts(classifier_dir):
    reward = SequenceClassifierReward(classifier_dir, max_length=8)
    full = SequenceClassifierReward(classifier_dir).encode(PROMPTS, RESPONSES)
    cut = reward.encode(PROMPTS, RESPONSES)
    assert cut == [row[-8:] for row in full]
    assert reward.truncated == sum(len(row) > 8 for row in full) > 0


class Planted:
    """An object a pickle would rebuild by calling ``Path.touch``: loading weights-only must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_weights_are_read_weights_only(classifier_dir, tmp_path):
    path = tmp_path / "pickled"
    path.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (path / name).write_bytes((Path(classifier_dir) / name).read_bytes())
    state = LlamaForSequenceClassification.from_pretrained(classifier_dir).state_dict()
    marker = tmp_path / "code-ran"
    torch.save({**state, "planted": Planted(marker)}, path / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError):
        SequenceClassifierReward(str(path)).load()
    assert not marker.exists()


def test_the_protocol():
    with pytest.raises(ValueError, match="one prompt per response"):
        check_batch(["a"], ["x", "y"])
    with pytest.raises(TypeError, match="not a single string"):
        check_batch("a", ["x"])
    assert checked_rewards(torch.tensor([0.5, 1.0]), 2).tolist() == [0.5, 1.0]
    for bad in (torch.tensor([1, 2]), torch.zeros(2, 1), torch.zeros(3), torch.tensor([0.0, float("inf")])):
        with pytest.raises(ValueError, match="reward"):
            checked_rewards(bad, 2)
    with pytest.raises(TypeError, match="not a tensor"):
        checked_rewards([0.5, 1.0], 2)


def test_a_config_names_a_reward_function_by_class_path(classifier_dir):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--reward_fn", type=RewardFn)
    config = parser.parse_args(["--reward_fn.class_path=lit_align.online.SequenceClassifierReward",
                                f"--reward_fn.init_args.path={classifier_dir}", "--reward_fn.init_args.batch_size=2"])
    reward = parser.instantiate(config).reward_fn
    assert isinstance(reward, SequenceClassifierReward) and isinstance(reward, RewardFn)
    assert reward.batch_size == 2


def test_the_controlled_tasks_oracle_is_a_reward_function():
    oracle = SentimentOracle()
    rewards = checked_rewards(oracle(["A film:", "A film:"], [" great and brilliant.", " awful."]), 2)
    assert rewards.tolist() == pytest.approx([oracle.reward(" great and brilliant."), oracle.reward(" awful.")])
