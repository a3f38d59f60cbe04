"""Claims judged over seeds (tools/frontier/seeds.py) on made-up runs: a claim holds only beyond twice the seed-level
standard error, a missing premise makes it "not testable here", a contradiction is reported as not holding."""

from __future__ import annotations

import statistics

import pytest

from tools.frontier.claims import Frontier, RunSummary
from tools.frontier.seeds import (
    Cell,
    cells,
    check_diversity_order,
    check_ece_changes,
    check_kl_balance,
    check_reward_above_frontier,
    compare,
    run_scalars,
)


def run(name: str, seed: int, beta: float = 0.1, **metrics) -> dict:
    return {"name": name, "label": name, "beta": beta, "seed": seed, **metrics}


def test_cell_mean_and_standard_error_over_seeds():
    table = cells([run("dpo", s, reward=r) for s, r in enumerate([0.8, 0.9, 1.0])])
    mean, se = table[("dpo", 0.1)].mean_se("reward")
    assert mean == pytest.approx(0.9)
    assert se == pytest.approx(statistics.stdev([0.8, 0.9, 1.0]) / 3**0.5)
    single = cells([run("dpo", 0, reward=0.5)])[("dpo", 0.1)]
    assert single.mean_se("reward")[1] == float("inf")  # one seed resolves nothing


def test_compare_needs_twice_the_standard_error():
    a, b = Cell("a", "a", 0.1, {"x": [1.0, 1.1, 1.2]}), Cell("b", "b", 0.1, {"x": [0.0, 0.1, 0.2]})
    assert compare(a, b, "x")[0] == 1
    assert compare(b, a, "x")[0] == -1
    noisy = Cell("c", "c", 0.1, {"x": [0.0, 2.0, 1.0]})
    assert compare(noisy, b, "x")[0] == 0


def test_kl_balance_premise_then_claim():
    base = [run("tdpo2", s, seq_kl_gap=g) for s, g in enumerate([0.0, 0.1, -0.1])]
    no_premise = base + [run("dpo", s, seq_kl_gap=g) for s, g in enumerate([0.05, -0.05, 0.0])]
    assert check_kl_balance(cells(no_premise)).outcome == "not testable here"
    premise = base + [run("dpo", s, seq_kl_gap=g) for s, g in enumerate([2.0, 2.2, 2.1])]
    assert check_kl_balance(cells(premise)).outcome == "holds"
    reversed_ = [run("tdpo2", s, seq_kl_gap=g) for s, g in enumerate([5.0, 5.2, 5.1])]
    reversed_ += [run("dpo", s, seq_kl_gap=g) for s, g in enumerate([2.0, 2.2, 2.1])]
    assert check_kl_balance(cells(reversed_)).outcome == "does not hold"


def test_diversity_order_and_ece_spread():
    rewards = {"dpo": [0.9, 0.91, 0.89], "js": [0.8, 0.81, 0.79], "forward_kl": [0.6, 0.61, 0.59]}
    rising = {"dpo": [1.0, 1.01, 0.99], "js": [1.2, 1.21, 1.19], "forward_kl": [1.4, 1.41, 1.39]}
    runs = [run(n, s, reward=rewards[n][s], entropy=rising[n][s], ece_margin=0.1 * i + 0.01 * s)
            for i, n in enumerate(rewards) for s in range(3)]
    assert check_diversity_order(cells(runs)).outcome == "holds"
    flat = [dict(r, entropy=1.0 + 0.05 * r["seed"]) for r in runs]
    assert check_diversity_order(cells(flat)).outcome == "does not hold"
    no_tradeoff = [dict(r, reward=0.5 + 0.1 * r["seed"]) for r in runs]
    assert check_diversity_order(cells(no_tradeoff)).outcome == "not testable here"
    assert check_ece_changes(cells(runs), "ece_margin", "m").outcome == "holds"
    assert check_ece_changes(cells(runs), "ece_likelihood", "l").outcome == "not measured"


def evaluation(kl: float, reward: float, se: float) -> dict[str, float]:
    return {"kl_reverse": kl, "reward": reward, "reward_se": se, "entropy": 1.0, "distinct_2": 0.5}


def test_reward_above_dpo_frontier_hand_worked():
    """DPO's evaluations (KL, reward ± se): (0.5, 0.6 ± 0.01), (1.0, 0.7 ± 0.01), (2.0, 0.8 ± 0.02), and a dominated
    (1.5, 0.65) left off the frontier. At KL 1.5 the frontier is 0.75; a run at reward 0.8 ± 0.01 is 0.05 above it,
    against 2·√(0.01² + 0.02²) = 0.0447 (the larger neighbour's se)."""
    dpo = [RunSummary("dpo", "DPO", beta, history=h, margins=[0.1]) for beta, h in [
        (0.1, [evaluation(0.5, 0.6, 0.01), evaluation(2.0, 0.8, 0.02)]),
        (0.3, [evaluation(1.0, 0.7, 0.01), evaluation(1.5, 0.65, 0.01)]),
    ]]
    frontier = Frontier.of(dpo)
    reference, above, margin = frontier.gap(evaluation(1.5, 0.8, 0.01))
    assert (reference, above) == (pytest.approx(0.75), pytest.approx(0.05))
    assert margin == pytest.approx(2 * (0.01**2 + 0.02**2) ** 0.5)
    assert frontier.gap(evaluation(3.0, 0.9, 0.01)) is None  # beyond DPO's measured KL
    tdpo2 = RunSummary("tdpo2", "TDPO2", 0.3, history=[evaluation(1.5, 0.8, 0.01)], margins=[0.2, -0.1])
    assert run_scalars(tdpo2, frontier)["reward_above_dpo"] == pytest.approx(0.05)


def test_reward_above_frontier_over_seeds():
    def judged(gaps: list[float | None]) -> str:
        runs = [run("tdpo2", s, beta=0.3, reward_above_dpo=g) for s, g in enumerate(gaps)]
        return check_reward_above_frontier(cells(runs)).outcome

    assert judged([0.075, 0.097, 0.090]) == "holds"  # mean 0.087, se 0.007
    assert judged([0.05, -0.04, 0.01]) == "does not hold"  # within noise
    assert judged([0.08, None, None]) == "not testable here"  # one seed within DPO's KL range
    assert check_reward_above_frontier(cells([run("dpo", 0, reward=0.5)])).outcome == "not measured"
