"""Pair building from k scored responses per prompt: hand-worked examples (ties, margins, k = 2), a naive loop over
random rewards with many ties, and the controlled task's best-vs-worst pairs reproduced."""

from __future__ import annotations

import random
from argparse import ArgumentError

import pytest
import torch
from jsonargparse import ArgumentParser

from lit_align.errors import ConfigError
from lit_align.online import PairBuilder, pair_rows
from lit_align.tasks.corpus import make_review
from lit_align.tasks.oracle import SentimentOracle
from lit_align.tasks.pairs import label_pairs

# Rewards in quarters, so every gap is exact in binary floating point.
REWARDS = torch.tensor([
    [0.00, 1.00, 0.50],  # prompt 0: rows 0, 1, 2
    [0.25, 0.25, 0.25],  # prompt 1: rows 3, 4, 5, all tied
    [0.75, 0.25, 0.75],  # prompt 2: rows 6, 7, 8, a tie for the best
])


def as_lists(pairs) -> tuple[list[int], list[int], list[int], list[float]]:
    return pairs.prompt.tolist(), pairs.chosen.tolist(), pairs.rejected.tolist(), pairs.gap.tolist()


def test_best_vs_worst_by_hand():
    # prompt 0: best row 1 (1.0), worst row 0 (0.0); prompt 1: all tied, no pair; prompt 2: rows 6 and 8 tie for the
    # best, the first (6) is taken, against row 7.
    assert as_lists(PairBuilder("best_vs_worst")(REWARDS)) == ([0, 2], [1, 6], [0, 7], [1.0, 0.5])


def test_all_above_margin_by_hand():
    # prompt 0: r1 - r0 = 1.0, r1 - r2 = 0.5, r2 - r0 = 0.5, in the order (i, j) = (1, 0), (1, 2), (2, 0);
    # prompt 2: r6 - r7 = 0.5 and r8 - r7 = 0.5; the tied rows 6 and 8 never pair, nor any rows of prompt 1.
    pairs = PairBuilder("all_above_margin")(REWARDS)
    assert as_lists(pairs) == ([0, 0, 0, 2, 2], [1, 1, 2, 6, 8], [0, 2, 0, 7, 7], [1.0, 0.5, 0.5, 0.5, 0.5])


def test_the_margin_is_strict():
    # margin 0.25: every gap above (all are 0.5 or 1.0); margin 0.5: only the gap of 1.0 is above it.
    assert len(PairBuilder("all_above_margin", margin=0.25)(REWARDS)) == 5
    assert as_lists(PairBuilder("all_above_margin", margin=0.5)(REWARDS)) == ([0], [1], [0], [1.0])
    assert as_lists(PairBuilder("best_vs_worst", margin=0.5)(REWARDS)) == ([0], [1], [0], [1.0])
    assert len(PairBuilder("best_vs_worst", margin=1.0)(REWARDS)) == 0


def test_two_responses_give_the_same_pair_under_both_rules():
    rewards = torch.tensor([[1.0, 2.0], [3.0, 3.0], [5.0, -1.0]])
    expected = ([0, 2], [1, 4], [0, 5], [1.0, 6.0])
    assert as_lists(PairBuilder("best_vs_worst")(rewards)) == expected
    assert as_lists(PairBuilder("all_above_margin")(rewards)) == expected


def naive_pairs(rewards: list[list[float]], rule: str, margin: float) -> list[tuple[int, int, int]]:
    pairs = []
    for p, row in enumerate(rewards):
        k = len(row)
        if rule == "best_vs_worst":
            best = max(range(k), key=row.__getitem__)
            worst = min(range(k), key=row.__getitem__)
            candidates = [(best, worst)]
        else:
            candidates = [(i, j) for i in range(k) for j in range(k)]
        pairs += [(p, p * k + i, p * k + j) for i, j in candidates if row[i] - row[j] > margin]
    return pairs


@pytest.mark.parametrize("rule", ["best_vs_worst", "all_above_margin"])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_against_a_naive_loop_with_many_ties(rule, k):
    rng = random.Random(k)
    rewards = [[float(rng.randint(0, 3)) for _ in range(k)] for _ in range(40)]
    for margin in (0.0, 1.0, 1.5):
        built = PairBuilder(rule, margin)(torch.tensor(rewards, dtype=torch.float64))
        assert list(zip(*as_lists(built)[:3], strict=True)) == naive_pairs(rewards, rule, margin)


def test_the_controlled_tasks_pairs_are_best_vs_worst():
    """The task labels its pairs best vs worst (:func:`lit_align.tasks.pairs.label_pairs`); the builder gives the
    same pairs from the same rewards, ties broken alike."""
    rng = random.Random(0)
    prompts = [f"prompt {i}" for i in range(30)]
    samples = [[make_review(rng).continuation for _ in range(4)] for _ in prompts]
    samples[0] = [samples[0][0]] * 4  # all tied
    samples[1][2] = samples[1][0]  # a tie, maybe for the best or the worst
    oracle = SentimentOracle()
    expected, _ = label_pairs(prompts, samples, oracle)
    rewards = torch.tensor([[oracle.reward(text) for text in texts] for texts in samples], dtype=torch.float64)
    responses = [text for texts in samples for text in texts]
    assert pair_rows(prompts, responses, rewards, PairBuilder()(rewards)) == expected


def test_pair_rows():
    prompts, responses = ["a", "b", "c"], [f"y{i}" for i in range(9)]
    rows = pair_rows(prompts, responses, REWARDS, PairBuilder()(REWARDS))
    assert rows == [{"prompt": "a", "chosen": "y1", "rejected": "y0", "chosen_reward": 1.0, "rejected_reward": 0.0},
                    {"prompt": "c", "chosen": "y6", "rejected": "y7", "chosen_reward": 0.75, "rejected_reward": 0.25}]
    with pytest.raises(ValueError, match="do not match"):
        pair_rows(prompts, responses[:-1], REWARDS, PairBuilder()(REWARDS))


def test_refusals():
    with pytest.raises(ConfigError, match="pairs.rule"):
        PairBuilder("best_of_n")
    with pytest.raises(ConfigError, match="pairs.margin"):
        PairBuilder(margin=-0.1)
    with pytest.raises(ValueError, match="k >= 2"):
        PairBuilder()(torch.zeros(4, 1))
    with pytest.raises(ValueError, match="k >= 2"):
        PairBuilder()(torch.zeros(4))
    with pytest.raises(ValueError, match="finite"):
        PairBuilder()(torch.tensor([[0.0, float("nan")]]))


def test_a_config_gives_the_builder_as_a_plain_mapping():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--pairs", type=PairBuilder, default=PairBuilder())
    built = parser.instantiate(parser.parse_args(['--pairs={"rule": "all_above_margin", "margin": 0.1}'])).pairs
    assert built == PairBuilder("all_above_margin", 0.1)
    with pytest.raises(ArgumentError, match="best_vs_worst"):  # a typo fails at parse time, naming the choices
        parser.parse_args(['--pairs={"rule": "best_vs_wrost"}'])
