"""The controlled-generation task: oracle, grammar, tokenizer, sampling, pairs, cached stages, report, data."""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from transformers import AutoTokenizer, LlamaForCausalLM

from lit_align.data import PreferenceDataModule
from lit_align.eval.generation import ended_before, score_responses
from lit_align.jsonl import read_jsonl
from lit_align.models.policy import PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import DPO
from lit_align.reference import FrozenCopy
from lit_align.tasks import (
    ControlledTask,
    ControlledTaskSettings,
    OracleRewardReport,
    SentimentOracle,
    SFTSettings,
    TinyLlamaSettings,
    build_controlled_task,
    response_logps,
    sample_continuations,
    sentiment_score,
)
from lit_align.tasks.corpus import _phrase, make_review, unique_prompts
from lit_align.tasks.pairs import label_pairs
from lit_align.tasks.stages import MARKER, run_stage
from lit_align.tasks.tokenizer import train_tokenizer
from tests.test_module import make_trainer

TINY = ControlledTaskSettings(
    n_reviews=400,
    n_train_prompts=24,
    n_val_prompts=8,
    n_heldout_prompts=6,
    model=TinyLlamaSettings(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1),
    sft=SFTSettings(max_steps=4, batch_size=16, warmup_steps=1),
    samples_per_prompt=3,
    max_new_tokens=10,
    sampling_batch_size=16,
)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# --- oracle -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("the film is set in paris .", 0.0),
        ("", 0.0),
        ("the acting was great .", 1.5),
        ("The Acting Was GREAT .", 1.5),
        ("the acting was great . i loved the music .", 3.5),
        ("the plot was very bad .", -1.5 * 1.5),
        ("the plot was not bad .", 0.75),
        ("the plot was not very good .", -0.5 * 1.5 * 1.0),
        ("the plot was somewhat dull , but the music was brilliant .", -0.75 + 2.0),
        ("not . great", 1.5),  # a full stop ends the negation's scope
        ("not great great", -0.75 + 1.5),  # a modifier applies to the next sentiment word only
        ("i would not recommend it .", -0.5),
    ],
)
def test_sentiment_score_on_hand_made_texts(text, score):
    assert sentiment_score(text) == pytest.approx(score)


def test_oracle_reward_is_a_graded_sigmoid_of_the_score():
    oracle = SentimentOracle(temperature=2.0)
    texts = ["it was awful and terrible .", "it was bad .", "it was long .", "it was fine .", "it was brilliant ."]
    rewards = oracle([""] * len(texts), texts).tolist()
    assert rewards == pytest.approx([sigmoid(-4.0 / 2), sigmoid(-1.5 / 2), 0.5, sigmoid(0.5 / 2), sigmoid(1.0)])
    assert rewards == sorted(rewards) and len(set(rewards)) == len(rewards)
    assert SentimentOracle(temperature=0.5).reward("it was fine .") > rewards[3]
    with pytest.raises(ValueError, match="temperature"):
        SentimentOracle(temperature=0.0)


def test_grammar_phrases_carry_the_polarity_they_were_drawn_with():
    rng = random.Random(0)
    for _ in range(300):
        assert sentiment_score(_phrase(rng, +1)) > 0
        assert sentiment_score(_phrase(rng, -1)) < 0


def test_corpus_rewards_are_spread_out():
    rng = random.Random(0)
    continuations = [make_review(rng).continuation for _ in range(2000)]
    rewards = SentimentOracle()([""] * len(continuations), continuations).tolist()
    assert 0.4 < sum(rewards) / len(rewards) < 0.6
    assert min(rewards) < 0.1 and max(rewards) > 0.9
    assert sum(0.3 < r < 0.7 for r in rewards) > 400  # mixed reviews, not only extremes


def test_unique_prompts_are_distinct_and_avoid_the_excluded_ones():
    rng = random.Random(0)
    first = unique_prompts(50, rng, exclude=set())
    second = unique_prompts(50, rng, exclude=set(first))
    assert len(set(first)) == 50 and not set(first) & set(second)


# --- tokenizer --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reviews():
    rng = random.Random(1)
    return [make_review(rng) for _ in range(300)]


@pytest.fixture(scope="module")
def tokenizer(reviews, tmp_path_factory):
    saved = tmp_path_factory.mktemp("task_tokenizer")
    train_tokenizer(r.text for r in reviews).save_pretrained(saved)
    return AutoTokenizer.from_pretrained(saved)


def test_tokenizer_round_trip_and_special_tokens(tokenizer, reviews):
    for review in reviews[:50]:
        ids = tokenizer(review.text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id not in ids
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == review.text
    assert {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id} == {
        0,
        1,
        2,
        3,
    }
    assert tokenizer("zebra")["input_ids"] == [tokenizer.bos_token_id, tokenizer.unk_token_id]


def test_tokenised_prompt_is_a_prefix_of_prompt_plus_response(tokenizer, reviews):
    for review in reviews:
        prompt_ids = tokenizer(review.prompt)["input_ids"]
        full_ids = tokenizer(review.prompt + review.continuation)["input_ids"]
        assert full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids)


def test_chat_template_keeps_the_prompt_a_prefix(tokenizer):
    prompt = [{"role": "user", "content": "i watched the lost river ."}]
    answer = [{"role": "assistant", "content": "it was great ."}]
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
    assert full_text.startswith(prompt_text)
    prompt_ids, full_ids = tokenizer(prompt_text)["input_ids"], tokenizer(full_text)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert tokenizer.convert_tokens_to_ids("<|assistant|>") in prompt_ids


# --- sampling and log-probs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_llama(tokenizer):
    torch.manual_seed(0)
    return LlamaForCausalLM(TINY.model.llama_config(tokenizer))


def test_sampling_is_seeded_and_leaves_global_state_alone(random_llama, tokenizer, reviews):
    prompts = [r.prompt for r in reviews[:5]]
    random_llama.train()
    state = torch.random.get_rng_state()
    first = sample_continuations(random_llama, tokenizer, prompts, num_samples=3, max_new_tokens=6, batch_size=4)
    assert torch.equal(state, torch.random.get_rng_state())
    assert random_llama.training
    again = sample_continuations(random_llama, tokenizer, prompts, num_samples=3, max_new_tokens=6, batch_size=4)
    other = sample_continuations(
        random_llama, tokenizer, prompts, num_samples=3, max_new_tokens=6, batch_size=4, seed=1
    )
    assert first == again and first != other
    assert [len(s) for s in first] == [3] * 5
    assert all(y == "" or (y.startswith(" ") and len(y.split()) <= 6) for ys in first for y in ys)


def test_response_logps_matches_a_naive_loop(random_llama, tokenizer, reviews):
    prompts = [r.prompt for r in reviews[:4]]
    responses = [r.continuation for r in reviews[4:8]]
    got = response_logps(random_llama, tokenizer, prompts, responses, batch_size=3)
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        n_prompt = len(tokenizer(prompt)["input_ids"])
        ids = tokenizer(prompt + response)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logits = random_llama(input_ids=torch.tensor([ids])).logits[0].double()
        expected = sum(torch.log_softmax(logits[t - 1], -1)[ids[t]].item() for t in range(n_prompt, len(ids)))
        assert got[i].item() == pytest.approx(expected, abs=1e-4)


# --- pairs ------------------------------------------------------------------------------------------------


def test_label_pairs_takes_best_and_worst_and_counts_ties():
    prompts = ["p1", "p2", "p3"]
    samples = [
        [" it was bad .", " it was great .", " it was long ."],
        [" it was long .", " it was short ."],
        [" i loved it .", " i hated it ."],
    ]
    rows, stats = label_pairs(prompts, samples, SentimentOracle())
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [
        ("p1", " it was great .", " it was bad ."),
        ("p3", " i loved it .", " i hated it ."),
    ]
    assert (stats.n_prompts, stats.n_pairs, stats.n_ties, stats.tie_fraction) == (3, 2, 1, pytest.approx(1 / 3))
    assert stats.mean_margin == pytest.approx(((sigmoid(0.75) - sigmoid(-0.75)) + (sigmoid(1) - sigmoid(-1))) / 2)
    with pytest.raises(ValueError, match="at least two"):
        label_pairs(["p"], [[" one"]], SentimentOracle())


# --- stages -----------------------------------------------------------------------------------------------


def test_run_stage_caches_by_fingerprint(tmp_path):
    calls = []

    def build(out: Path):
        calls.append(out)
        (out / "data.txt").write_text(str(len(calls)))
        return {"calls": len(calls)}

    first = run_stage(tmp_path, "a", {"x": 1}, build)
    assert first.ran and (tmp_path / "a" / "data.txt").read_text() == "1"
    assert not run_stage(tmp_path, "a", {"x": 1}, build).ran
    assert run_stage(tmp_path, "a", {"x": 2}, build).ran and len(calls) == 2
    downstream = run_stage(tmp_path, "b", {}, build, [first])
    assert downstream.ran and not run_stage(tmp_path, "b", {}, build, [first]).ran
    changed_upstream = run_stage(tmp_path, "a", {"x": 3}, build)
    assert run_stage(tmp_path, "b", {}, build, [changed_upstream]).ran
    assert json.loads((tmp_path / "a" / MARKER).read_text())["calls"] == 4 and len(calls) == 5


def test_interrupted_stage_is_rebuilt(tmp_path):
    def failing(out: Path):
        (out / "half.txt").write_text("partial")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        run_stage(tmp_path, "a", {}, failing)
    assert not (tmp_path / "a").exists()
    assert run_stage(tmp_path, "a", {}, lambda out: None).ran


# --- the whole pipeline on a tiny setting -----------------------------------------------------------------


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("task")
    return build_controlled_task(workdir, TINY, progress=False)


def test_pipeline_builds_every_stage_then_skips_them(task):
    assert task.built == ("corpus", "tokenizer", "sft", "pairs")
    again = build_controlled_task(task.workdir, TINY, progress=False)
    assert again.built == ()
    assert again.tokenizer_dir == task.tokenizer_dir and again.sft_dir.joinpath("model.safetensors").is_file()


def test_pipeline_rebuilds_only_what_a_changed_setting_touches(task, tmp_path):
    workdir = tmp_path / "copy"
    shutil.copytree(task.workdir, workdir)
    assert build_controlled_task(workdir, replace(TINY, sampling_temperature=0.7), progress=False).built == ("pairs",)
    assert build_controlled_task(workdir, replace(TINY, n_heldout_prompts=7), progress=False).built == (
        "corpus",
        "tokenizer",
        "sft",
        "pairs",
    )


def test_pairs_files_are_well_formed(task):
    oracle = SentimentOracle()
    stats = json.loads(task.pair_stats_path.read_text())
    prompts = {
        split: [r["prompt"] for r in read_jsonl(task.corpus_dir / f"{split}_prompts.jsonl")]
        for split in ("train", "val", "heldout")
    }
    assert [len(prompts[s]) for s in ("train", "val", "heldout")] == [24, 8, 6]
    assert len({p for ps in prompts.values() for p in ps}) == 38
    corpus_prompts = {r["prompt"] for r in read_jsonl(task.corpus_dir / "reviews.jsonl")}
    assert not corpus_prompts & set(prompts["heldout"])
    for split, path in (("train", task.train_pairs_path), ("val", task.val_pairs_path)):
        rows = read_jsonl(path)
        assert stats[split]["n_pairs"] == len(rows) and stats[split]["n_pairs"] + stats[split]["n_ties"] == len(
            prompts[split]
        )
        for row in rows:
            assert {"prompt", "chosen", "rejected"} <= row.keys()
            assert all(isinstance(row[k], str) for k in ("prompt", "chosen", "rejected"))
            assert row["prompt"] in prompts[split] and row["chosen"] != row["rejected"]
            assert oracle.reward(row["chosen"]) == pytest.approx(row["chosen_reward"])
            assert oracle.reward(row["rejected"]) == pytest.approx(row["rejected_reward"])
            assert row["chosen_reward"] > row["rejected_reward"]
            assert row["chosen"] == "" or row["chosen"].startswith(" ")
    assert json.loads((task.sft_dir / "config.json").read_text())["hidden_size"] == 16


def test_settings_are_validated():
    with pytest.raises(ValueError, match="samples_per_prompt"):
        ControlledTaskSettings(samples_per_prompt=1)
    with pytest.raises(ValueError, match="n_reviews"):
        ControlledTaskSettings(n_reviews=0)
    with pytest.raises(ValueError, match="sft.batch_size"):
        ControlledTaskSettings(n_reviews=10)
    with pytest.raises(ValueError, match="num_prompts"):
        OracleRewardReport(num_prompts=0)
    with pytest.raises(ValueError, match="learning_rate"):
        SFTSettings(learning_rate=0.0)
    with pytest.raises(ValueError, match="num_attention_heads"):
        TinyLlamaSettings(hidden_size=30, num_attention_heads=4)


# --- data module and report -------------------------------------------------------------------------------


def test_data_module_serves_the_task_pairs(task):
    source = ControlledTask(workdir=str(task.workdir), task=TINY, progress=False)
    dm = PreferenceDataModule(source=source, max_length=128, max_prompt_length=32, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.tokenizer.name_or_path == str(task.sft_dir)  # the task's own tokenizer
    assert dm.heldout_prompts_path == task.heldout_prompts_path
    assert len(dm.train_set) == len(read_jsonl(task.train_pairs_path))
    assert len(dm.val_set) == len(read_jsonl(task.val_pairs_path))
    assert sum(dm.report["train"]["notes"].values()) == 0  # no prompt_not_prefix, nothing truncated
    assert dict(dm.report["train"]["layouts"]) == {"explicit": len(dm.train_set)}
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8 and batch["response_mask"].any(-1).all()
    assert "source" not in dm.hparams and "settings" not in vars(dm)  # a Python object: kept out of checkpoints


def report_run(tmp_path, task, policy_dir, reference=None, **report_args):
    """A real fit of one step at learning rate 0 (the policy stays as built), validated, with the report."""
    source = ControlledTask(workdir=str(task.workdir), task=TINY, progress=False)
    data = PreferenceDataModule(source=source, max_length=128, max_prompt_length=32, batch_size=4)
    module = AlignmentModule(DPO(), PolicySpec(path=str(policy_dir)), reference=reference,
                             optimizer=partial(torch.optim.SGD, lr=0.0))
    report = OracleRewardReport(**report_args)
    trainer = make_trainer(tmp_path, 1, callbacks=[report], logger=CSVLogger(tmp_path, name="", version=""),
                           val_check_interval=1, limit_val_batches=1)
    trainer.fit(module, data)
    return report


def test_report_scores_reference_and_policy_on_heldout_prompts(task, tmp_path):
    report = report_run(tmp_path, task, task.sft_dir, num_prompts=4, max_new_tokens=10, batch_size=3)
    results = report.results
    assert results["policy_reward"] == pytest.approx(results["reference_reward"])  # same model, same seeds
    assert results["policy_kl"] == pytest.approx(0.0, abs=1e-6)
    assert 0 < results["policy_reward"] < 1 and 0 <= results["heldout_reward_accuracy"] <= 1
    assert [h["step"] for h in report.history] == [1], "a preset that evaluates once, at the end of training"
    logged = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"task/reward", "task/kl_reverse", "task/win_rate"} <= set(logged)
    assert "held-out implicit-reward accuracy" in report.describe(4)
    with pytest.raises(ValueError, match="temperature"):
        OracleRewardReport(temperature=0)


def eos_only_model(tokenizer) -> LlamaForCausalLM:
    """A Llama that ends every response at once: constant hidden states, an LM head that only sees EOS."""
    config = TINY.model.llama_config(tokenizer)
    config.tie_word_embeddings = False
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[tokenizer.eos_token_id] = 1.0
    return model


def test_report_keeps_policy_and_reference_apart(task, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(task.sft_dir)
    eos_only_model(tokenizer).save_pretrained(tmp_path / "eos-only")
    torch.manual_seed(0)
    LlamaForCausalLM(TINY.model.llama_config(tokenizer)).save_pretrained(tmp_path / "random")
    reference = FrozenCopy(path=str(tmp_path / "eos-only"))
    report = report_run(tmp_path, task, tmp_path / "random", reference=reference, max_new_tokens=8, seed=5)

    policy = LlamaForCausalLM.from_pretrained(tmp_path / "random")
    prompts = [row["prompt"] for row in read_jsonl(task.heldout_prompts_path)]
    samples = sample_continuations(policy, tokenizer, prompts, num_samples=2, max_new_tokens=8, seed=5)
    texts, flat_prompts = [y for ys in samples for y in ys], [p for p in prompts for _ in range(2)]
    ended = ended_before(tokenizer, flat_prompts, texts, 8)
    reference_model = LlamaForCausalLM.from_pretrained(tmp_path / "eos-only")
    kl = (score_responses(policy, tokenizer, flat_prompts, texts, ended=ended)
          - score_responses(reference_model, tokenizer, flat_prompts, texts, ended=ended)).mean()
    biased = (response_logps(policy, tokenizer, flat_prompts, texts)
              - response_logps(reference_model, tokenizer, flat_prompts, texts)).mean()
    assert report.results["reference_reward"] == 0.5 and report.results["reference_reward_std"] == 0.0
    assert report.results["policy_reward"] == pytest.approx(SentimentOracle()(flat_prompts, texts).mean().item())
    assert report.results["policy_reward"] != 0.5
    assert report.results["policy_kl"] == pytest.approx(kl.item(), rel=1e-5)
    assert not all(ended) and report.results["policy_kl"] != pytest.approx(biased.item(), rel=1e-3), (
        "cut samples must be scored without the EOS term"
    )
    assert report.results["policy_kl"] > 1.0
