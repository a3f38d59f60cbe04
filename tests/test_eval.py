"""Evaluation: each metric against a naive implementation, merged states equal one pass (the multi-process
reduction), scoring against the task's log-probs, the sampling callback logging to TensorBoard, the claim checks
on made-up results, and a two-run sweep through ``python -m tools.frontier``."""

from __future__ import annotations

import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoTokenizer, LlamaForCausalLM

from lit_align.data import PreferenceDataModule
from lit_align.eval import (
    DistinctN,
    PreferenceCalibrationError,
    SamplingEvaluation,
    SequenceKL,
    TokenEntropy,
    WinRate,
    ended_before,
    score_responses,
)
from lit_align.eval.generation import response_logps
from lit_align.eval.metrics import standard_error
from lit_align.models.policy import PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import DPO
from lit_align.tasks import (
    ControlledTask,
    ControlledTaskSettings,
    SentimentOracle,
    SFTSettings,
    TinyLlamaSettings,
)
from tests.test_module import make_trainer
from tools.frontier.claims import (
    RunSummary,
    check_diversity_order,
    check_ece_changes,
    check_kl_balance,
    check_reward_at_equal_kl,
    pareto_frontier,
)

REPO = Path(__file__).resolve().parents[1]
TINY_TASK = ControlledTaskSettings(
    n_reviews=300, n_train_prompts=48, n_val_prompts=24, n_heldout_prompts=8,
    model=TinyLlamaSettings(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1),
    sft=SFTSettings(max_steps=20, batch_size=16, warmup_steps=2), samples_per_prompt=2, max_new_tokens=12,
)


# ------------------------------------------------------------------------------------------- metrics vs naive


def naive_entropy(logits: list[list[float]]) -> list[float]:
    out = []
    for row in logits:
        finite = [z for z in row if z != -math.inf]
        top = max(finite)
        total = sum(math.exp(z - top) for z in finite)
        probs = [math.exp(z - top) / total for z in finite]
        out.append(-sum(p * math.log(p) for p in probs if p > 0))
    return out


def test_token_entropy_matches_naive_and_hand_worked_cases():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7, dtype=torch.float64) * 3
    mask = torch.rand(3, 5) > 0.4
    metric = TokenEntropy()
    metric.update(logits, mask)
    naive = [h for b in range(3) for t in range(5) if mask[b, t] for h in naive_entropy([logits[b, t].tolist()])]
    assert float(metric.compute()) == pytest.approx(sum(naive) / len(naive), rel=1e-5)

    hand = TokenEntropy()
    hand.update(torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -math.inf, -math.inf, -math.inf]]))
    assert float(hand.compute()) == pytest.approx(math.log(4) / 2)  # uniform over 4, then a certain token


def test_sequence_kl_win_rate_and_merged_states():
    logp = torch.tensor([-3.0, -5.0, -1.5, -2.0])
    other = torch.tensor([-4.0, -4.0, -2.5, -7.0])
    kl = SequenceKL()
    kl.update(logp[:2], other[:2])
    second = SequenceKL()
    second.update(logp[2:], other[2:])
    kl.merge_state(second)  # what the reduction over two processes does
    assert float(kl.compute()) == pytest.approx((1 - 1 + 1 + 5) / 4)

    wins = WinRate()
    wins.update(torch.tensor([0.9, 0.2, 0.5, 0.7, 0.1]), torch.tensor([0.1, 0.3, 0.5, 0.2, 0.1]))
    assert float(wins.compute()) == pytest.approx((1 + 0 + 0.5 + 1 + 0.5) / 5)
    with pytest.raises(ValueError, match="shapes differ"):
        wins.update(torch.zeros(2), torch.zeros(3))


def naive_distinct(texts: list[str], n: int) -> float:
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_distinct_n_matches_naive_across_merged_states(n):
    assert naive_distinct(["a b a b"], 2) == pytest.approx(2 / 3)
    rng = random.Random(n)
    texts = [" ".join(rng.choice("the film was good bad very".split()) for _ in range(rng.randint(1, 9)))
             for _ in range(40)]
    first, second = DistinctN(n), DistinctN(n)
    first.update(texts[:25])
    second.update(texts[25:])
    first.merge_state(second)
    assert float(first.compute()) == pytest.approx(naive_distinct(texts, n))
    hand = DistinctN(2)
    hand.update(["a b a b", "b a"])  # bigrams: (a b) (b a) (a b) | (b a): 2 distinct of 4, none across texts
    assert float(hand.compute()) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="n must be >= 1"):
        DistinctN(0)


def naive_ece(margins: list[float], n_bins: int = 10) -> float:
    bins: dict[int, list[tuple[float, float]]] = {}
    for m in margins:
        p = 1 / (1 + math.exp(-m))
        confidence, correct = max(p, 1 - p), float(p > 0.5)
        bins.setdefault(math.floor(confidence * n_bins), []).append((confidence, correct))
    return sum(
        len(items) / len(margins) * abs(sum(c for _, c in items) / len(items) - sum(p for p, _ in items) / len(items))
        for items in bins.values()
    )


def test_preference_ece_matches_naive_and_hand_worked_case():
    hand = PreferenceCalibrationError()
    # p = 3/4 (right, twice), p = 1/4 (confidence 3/4, wrong), p = 1/2 (confidence 1/2, counted wrong):
    # ECE = 3/4 · |2/3 - 3/4| + 1/4 · |0 - 1/2| = 3/16
    hand.update(torch.tensor([math.log(3), math.log(3), -math.log(3), 0.0]))
    assert float(hand.compute()) == pytest.approx(3 / 16, abs=1e-6)

    torch.manual_seed(1)
    margins = torch.randn(500) * 2 + 0.7
    metric, other = PreferenceCalibrationError(), PreferenceCalibrationError()
    metric.update(margins[:300])
    other.update(margins[300:])
    metric.merge_state(other)
    assert float(metric.compute()) == pytest.approx(naive_ece(margins.tolist()), abs=1e-5)
    # the binary form against an always-1 label would be 1 - mean(p); this is not it
    assert float(metric.compute()) != pytest.approx(float(1 - torch.sigmoid(margins).mean()), abs=1e-3)


# ------------------------------------------------------------------------------------------- scoring, callback


@pytest.fixture(scope="module")
def tiny_task(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("task")
    PreferenceDataModule(source=ControlledTask(str(workdir), TINY_TASK, progress=False), max_length=128,
                         max_prompt_length=32).prepare_data()
    return workdir


def test_score_responses_matches_task_logps_and_naive_entropy(tiny_task):
    tokenizer = AutoTokenizer.from_pretrained(tiny_task / "sft")
    model = LlamaForCausalLM.from_pretrained(tiny_task / "sft").double()
    prompts = ["i watched the silent river last night .", "here is my review of the lost city ."]
    responses = [" the acting was great .", " i hated the plot . it was dull ."]
    all_ended = score_responses(model, tokenizer, prompts, responses, batch_size=1)
    torch.testing.assert_close(all_ended.double(), response_logps(model, tokenizer, prompts, responses).double())

    assert ended_before(tokenizer, prompts, responses, max_new_tokens=9) == [True, False]  # 5 and 9 tokens
    entropy = TokenEntropy()
    logps = score_responses(model, tokenizer, prompts, responses, ended=[True, False], batch_size=1,
                            entropy=entropy, chunk_size=3)
    naive_logps, naive_h = [], []
    for prompt, response, end in zip(prompts, responses, [True, False], strict=True):
        n_prompt = len(tokenizer(prompt)["input_ids"])
        ids = tokenizer(prompt + response)["input_ids"] + ([tokenizer.eos_token_id] if end else [])
        log_probs = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
        naive_logps.append(sum(log_probs[t - 1, ids[t]].item() for t in range(n_prompt, len(ids))))
        naive_h += naive_entropy(model(torch.tensor([ids])).logits[0][n_prompt - 1 : len(ids) - 1].tolist())
    assert logps.tolist() == pytest.approx(naive_logps, rel=1e-6)
    assert logps[1] > all_ended[1]  # the cut response is not charged for an EOS
    assert float(entropy.compute()) == pytest.approx(sum(naive_h) / len(naive_h), rel=1e-5)


def test_callback_logs_metrics_and_texts_to_tensorboard(tiny_task, tmp_path):
    data = PreferenceDataModule(source=ControlledTask(str(tiny_task), TINY_TASK, progress=False), max_length=128,
                                max_prompt_length=32, batch_size=8)
    module = AlignmentModule(
        DPO(beta=0.1), PolicySpec(path=str(tiny_task / "sft")), optimizer=partial(torch.optim.AdamW, lr=5e-3)
    )
    callback = SamplingEvaluation(every_n_steps=2, reward_fn=SentimentOracle(), num_prompts=8, samples_per_prompt=2,
                                  max_new_tokens=12, num_texts=2)
    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    make_trainer(tmp_path, 4, callbacks=[callback], logger=logger, limit_val_batches=0).fit(module, data)

    assert [h["step"] for h in callback.history] == [0, 2, 4]
    start, end = callback.history[0], callback.history[-1]
    # at step 0 the policy is the reference and both sample with the same seeds
    assert start["kl_reverse"] == 0 and start["kl_forward"] == 0 and start["win_rate"] == 0.5
    assert start["kl_reverse_se"] == 0 and start["reward_se"] > 0
    assert start["reward"] == start["reference_reward"]
    assert start["entropy"] == pytest.approx(start["reference_entropy"])
    assert end["kl_reverse"] > 0 and end["pairs/accuracy"] > 0.5
    assert {"pairs/ece", "pairs/seq_kl_chosen", "pairs/seq_kl_rejected", "distinct_1", "distinct_3"} <= set(end)
    assert 0 <= end["truncated"] <= 1

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    steps = [event.step for event in events.Scalars("eval/kl_reverse")]
    assert steps == [0, 2, 4]
    assert events.Scalars("eval/pairs/ece")[-1].value == pytest.approx(end["pairs/ece"], rel=1e-5)
    text = events.Tensors("eval/samples/text_summary")
    assert len(text) == 3 and b"| prompt | reference |" in text[-1].tensor_proto.string_val[0]


def test_standard_error_matches_naive():
    values = torch.tensor([0.2, 0.9, 0.4, 0.4, 0.75])
    naive = statistics.stdev(values.tolist()) / math.sqrt(len(values))
    assert standard_error(values, torch.device("cpu")) == pytest.approx(naive)


def test_callback_validates_its_arguments():
    with pytest.raises(ValueError, match="every_n_steps must be >= 1"):
        SamplingEvaluation(every_n_steps=0, reward_fn=SentimentOracle())
    with pytest.raises(ValueError, match=r"distinct_n\[1\] must be >= 1"):
        SamplingEvaluation(distinct_n=(1, 0), reward_fn=SentimentOracle())
    with pytest.raises(ValueError, match="needs reward_fn"):
        SamplingEvaluation()


# ------------------------------------------------------------------------------------------- claims


def summary(name: str, beta: float, points: list[tuple[float, float]], margins=(1.0, -1.0), chosen=None,
            rejected=None, **final) -> RunSummary:
    history = [{"kl_reverse": kl, "reward": reward, "entropy": 1.0, "distinct_2": 0.1} for kl, reward in points]
    history[-1].update(final)
    return RunSummary(name, name.upper(), beta, history, list(margins), chosen, rejected)


def test_pareto_frontier_keeps_undominated_points():
    frontier = pareto_frontier([(0, 0.5), (1, 0.7), (2, 0.6), (3, 0.9), (0.5, 0.4)])
    assert frontier.tolist() == [[0, 0.5], [1, 0.7], [3, 0.9]]


def test_claim_checks_report_failures_as_such():
    mids = [summary(m, 0.1, [(0, 0.5), (1, 0.6)], entropy=1.1) for m in ("js", "alpha_0.5")]
    holds = [summary("dpo", 0.1, [(0, 0.5), (2, 0.8)], entropy=1.0), *mids,
             summary("forward_kl", 0.1, [(0, 0.5), (1, 0.55)], entropy=1.3)]
    assert check_diversity_order(holds).outcome == "holds"
    fails = [summary("dpo", 0.1, [(0, 0.5), (2, 0.8)], entropy=1.5), *mids,
             summary("forward_kl", 0.1, [(0, 0.5), (1, 0.55)], entropy=1.3)]
    verdict = check_diversity_order(fails)
    assert verdict.outcome == "does not hold" and "entropy/token 1.500 → 1.100 → 1.300 (no)" in verdict.evidence[0]

    dpo = summary("dpo", 0.1, [(0, 0.5), (2, 0.7), (4, 0.8)], chosen=[1.0, 1.0], rejected=[3.0, 3.0])
    better = summary("tdpo2", 0.1, [(0, 0.5), (2, 0.75)], chosen=[1.0, 1.0], rejected=[1.5, 1.5])
    worse = summary("tdpo2", 0.3, [(0, 0.5), (3, 0.7)], chosen=[1.0, 1.0], rejected=[1.5, 1.5])
    assert check_reward_at_equal_kl([dpo, better]).outcome == "holds"
    verdict = check_reward_at_equal_kl([dpo, better, worse])
    assert verdict.outcome == "partly" and "vs DPO frontier 0.750 (-0.050, 2·se 0.000: no)" in verdict.evidence[1]
    noisy = summary("tdpo2", 0.1, [(0, 0.5), (2, 0.75)], reward_se=0.03)  # +0.05 within 2·se = 0.06
    assert check_reward_at_equal_kl([dpo, noisy]).outcome == "does not hold"
    assert check_kl_balance([dpo, better]).outcome == "holds"
    assert check_kl_balance([dpo]).outcome == "not measured"

    sharp = summary("dpo", 0.1, [(0, 0.5)], margins=[8.0] * 50 + [-8.0] * 50)  # confident and half wrong
    honest = summary("forward_kl", 0.1, [(0, 0.5)], margins=[0.01] * 50 + [-0.01] * 50)
    assert check_ece_changes([sharp, honest]).outcome == "holds"
    assert check_ece_changes([sharp, summary("js", 0.1, [(0, 0.5)], margins=[8.0] * 50 + [-8.0] * 50)]).outcome \
        == "does not hold"


# ------------------------------------------------------------------------------------------- the sweep tool


@pytest.mark.slow
def test_frontier_micro_sweep_writes_table_and_figures_and_caches_runs(tmp_path):
    command = [
        sys.executable, "-m", "tools.frontier", "--quick",
        "--workdir", str(tmp_path / "work"), "--out_dir", str(tmp_path / "out"),
        "--objectives", '["dpo", "tdpo2"]', "--betas", "[0.3]", "--hh.enabled", "false",
        "--task.n_reviews", "600", "--task.n_train_prompts", "96", "--task.n_val_prompts", "48",
        "--task.n_heldout_prompts", "16", "--task.sft.max_steps", "60", "--run.eval_every_n_steps", "3",
        "--run.num_prompts", "16",
    ]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    first = subprocess.run(command, capture_output=True, text=True, timeout=280, check=False, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "out"
    report = (out / "frontier.md").read_text()
    for figure in ("frontier.png", "diversity.png", "calibration.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    results = sorted((tmp_path / "work" / "runs").glob("*/results.json"))
    assert len(results) == 2
    runs = [RunSummary(**json.loads(path.read_text())) for path in results]
    assert all(run.history[0]["step"] == 0 and run.history[-1]["step"] > 0 for run in runs)
    # the claims table states what the claim checks find on these very runs, with their numbers
    table = {int(m[1]): (m[2], m[3]) for m in re.finditer(r"^\| (\d) \| [^|]+ \| \*\*([^*]+)\*\* \| (.*) \|$",
                                                          report, re.M)}
    checks = (check_diversity_order, check_reward_at_equal_kl, check_kl_balance, check_ece_changes)
    for number, check in enumerate(checks, start=1):
        verdict = check(runs)
        assert table[number][0] == verdict.outcome, (number, table[number])
        assert table[number][1] == ("<br>".join(verdict.evidence) or "—")
    assert table[1][0] == "not measured", "no forward-KL run: the diversity order cannot be judged"
    assert re.search(r"^\| 5 \| HH-RLHF.*\| not measured \|", report, re.M), "the HH check was disabled"
    for run in runs:  # the run table holds each run's end-of-training numbers
        final = run.history[-1]
        assert f"| {run.label} | 0.3 | {final['kl_reverse']:.2f}±{final['kl_reverse_se']:.2f} " in report
        assert f"| {final['reward']:.3f}±{final['reward_se']:.3f} | {final['win_rate']:.3f} |" in report

    second = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 cached; running 0" in second.stderr
