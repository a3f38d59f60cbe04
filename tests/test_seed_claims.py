"""Claims judged over seeds (tools/frontier/seeds.py) on made-up runs, by the one rule of lit_align.eval.verdict: a
claim holds only when its 95% t-interval (paired by seed) lies above 0, a missing premise makes it "not testable
here", a contradiction is "reversed", and twice the standard error is no longer enough with three seeds."""

from __future__ import annotations

import statistics

import pytest
import torch

from tools.frontier.claims import Frontier, RunSummary
from tools.frontier.seeds import (
    DIVERGENCES,
    Cell,
    cells,
    check_diversity_order,
    check_ece_changes,
    check_kl_balance,
    check_reward_above_frontier,
    compare,
    run_scalars,
    seed_section,
)


def run(name: str, seed: int, beta: float = 0.1, **metrics) -> dict:
    return {"name": name, "label": name, "beta": beta, "seed": seed, **metrics}


def test_cell_mean_and_standard_error_over_seeds():
    table = cells([run("dpo", s, reward=r) for s, r in enumerate([0.8, 0.9, 1.0])])
    mean, se = table[("dpo", 0.1)].mean_se("reward")
    assert mean == pytest.approx(0.9)
    assert se == pytest.approx(statistics.stdev([0.8, 0.9, 1.0]) / 3**0.5)
    assert table[("dpo", 0.1)].values["reward"] == {0: 0.8, 1: 0.9, 2: 1.0}  # by seed, for pairing
    single = cells([run("dpo", 0, reward=0.5)])[("dpo", 0.1)]
    assert single.mean_se("reward")[1] == float("inf")  # one seed resolves nothing


def test_compare_is_paired_by_seed_with_the_t_critical_value():
    a = Cell("a", "a", 0.1, {"x": {0: 1.0, 1: 1.1, 2: 1.2}})
    b = Cell("b", "b", 0.1, {"x": {0: 0.0, 1: 0.1, 2: 0.2}})
    assert compare(a, b, "x").verdict == "holds" and compare(a, b, "x").test == "paired"
    assert compare(b, a, "x").verdict == "reversed"
    noisy = Cell("c", "c", 0.1, {"x": {0: 0.0, 1: 2.0, 2: 1.0}})
    assert compare(noisy, b, "x").verdict == "not shown"
    # gaps +0.35, +0.05, +0.2: mean 0.2 > 2·se (0.173), yet t = 2.31 < t_0.975(2) = 4.30
    beyond_two_se = Cell("d", "d", 0.1, {"x": {0: 0.35, 1: 0.15, 2: 0.4}})
    judged = compare(beyond_two_se, b, "x")
    assert judged.effect > 2 * judged.se and judged.verdict == "not shown" and judged.n_pass is not None
    other_seeds = Cell("e", "e", 0.1, {"x": {5: 1.0, 6: 1.1, 7: 1.2}})
    assert compare(other_seeds, b, "x").test == "welch"


def test_kl_balance_premise_then_claim():
    base = [run("tdpo2", s, seq_kl_gap=g) for s, g in enumerate([0.0, 0.1, -0.1])]
    no_premise = base + [run("dpo", s, seq_kl_gap=g) for s, g in enumerate([0.05, -0.05, 0.0])]
    assert check_kl_balance(cells(no_premise)).outcome == "not testable here"
    premise = base + [run("dpo", s, seq_kl_gap=g) for s, g in enumerate([2.0, 2.2, 2.1])]
    assert check_kl_balance(cells(premise)).outcome == "holds"
    reversed_ = [run("tdpo2", s, seq_kl_gap=g) for s, g in enumerate([5.0, 5.2, 5.1])]
    reversed_ += [run("dpo", s, seq_kl_gap=g) for s, g in enumerate([2.0, 2.2, 2.1])]
    assert check_kl_balance(cells(reversed_)).outcome == "reversed"


def test_diversity_order_and_ece_spread():
    rewards = {"dpo": [0.9, 0.91, 0.89], "js": [0.8, 0.81, 0.79], "forward_kl": [0.6, 0.61, 0.59]}
    rising = {"dpo": [1.0, 1.01, 0.99], "js": [1.2, 1.21, 1.19], "forward_kl": [1.4, 1.41, 1.39]}
    runs = [run(n, s, reward=rewards[n][s], entropy=rising[n][s], ece_margin=0.1 * i + 0.01 * s)
            for i, n in enumerate(rewards) for s in range(3)]
    assert check_diversity_order(cells(runs)).outcome == "holds"
    flat = [dict(r, entropy=1.0 + 0.05 * r["seed"]) for r in runs]
    assert check_diversity_order(cells(flat)).outcome == "not shown"
    no_tradeoff = [dict(r, reward=0.5 + 0.1 * r["seed"]) for r in runs]
    assert check_diversity_order(cells(no_tradeoff)).outcome == "not testable here"
    assert check_ece_changes(cells(runs), "ece_margin", "m").outcome == "holds"
    assert check_ece_changes(cells(runs), "ece_likelihood", "l").outcome == "not measured"


def test_ece_spread_is_corrected_for_picking_the_extremes():
    """Highest − lowest of three divergences is picked after looking, so it is judged at the Bonferroni level for
    3 pairs (critical value t_{1−0.05/6}(2) = 7.65 instead of 4.30): paired gaps 0.082, 0.102, 0.112 (t 11.2) pass
    it; gaps 0.062, 0.102, 0.112 (t 6.0) pass 95% alone and fail once corrected."""
    def spread(gaps: list[float]) -> tuple[str, str]:
        runs = [run(n, s, ece_margin=0.2 + i * 0.001 + (gaps[s] if n == "forward_kl" else 0.0))
                for i, n in enumerate(DIVERGENCES) for s in range(3)]
        table = cells(runs)
        alone = compare(table[("forward_kl", 0.1)], table[("dpo", 0.1)], "ece_margin").verdict
        return check_ece_changes(table, "ece_margin", "m").outcome, alone

    assert spread([0.08, 0.10, 0.11]) == ("holds", "holds")
    assert spread([0.06, 0.10, 0.11]) == ("not shown", "holds")


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
    assert run_scalars(tdpo2, frontier)["ece_likelihood_no_eos"] is None  # a run from before the authors' reading


def test_the_likelihood_ece_with_and_without_the_end_token():
    """Both readings of the f-DPO paper's likelihood ECE are computed from their own mean log-probs (here, with the
    end token every chosen response is the likelier one, without it two of four are: ECE 0.485 and 0.278)."""
    from lit_align.eval import LikelihoodCalibrationError

    def ece(chosen: list[float], rejected: list[float]) -> float:
        metric = LikelihoodCalibrationError()
        metric.update(torch.tensor(chosen), torch.tensor(rejected))
        return float(metric.compute())

    with_end, without = ([-0.6, -0.7, -0.5, -0.9], [-1.0] * 4), ([-1.2, -0.4, -1.5, -0.3], [-1.0] * 4)
    summary = RunSummary("js", "JS", 0.3, history=[evaluation(1.0, 0.7, 0.01)], margins=[0.1] * 4,
                         chosen_mean_logps=with_end[0], rejected_mean_logps=with_end[1],
                         chosen_mean_logps_no_eos=without[0], rejected_mean_logps_no_eos=without[1])
    scalars = run_scalars(summary, Frontier.of([]))
    assert scalars["ece_likelihood"] == pytest.approx(ece(*with_end))
    assert scalars["ece_likelihood_no_eos"] == pytest.approx(ece(*without))
    assert (scalars["ece_likelihood"], scalars["ece_likelihood_no_eos"]) == pytest.approx((0.4854, 0.2783), abs=1e-4)


def test_reward_above_frontier_over_seeds():
    def judged(gaps: list[float | None]) -> str:
        runs = [run("tdpo2", s, beta=0.3, reward_above_dpo=g) for s, g in enumerate(gaps)]
        return check_reward_above_frontier(cells(runs)).outcome

    assert judged([0.075, 0.097, 0.090]) == "holds"  # mean 0.087, se 0.007
    assert judged([0.05, -0.04, 0.01]) == "not shown"  # within noise
    assert judged([-0.05, -0.06, -0.04]) == "reversed"
    assert judged([0.08, None, None]) == "not testable here"  # one seed within DPO's KL range
    assert check_reward_above_frontier(cells([run("dpo", 0, reward=0.5)])).outcome == "not measured"


def test_hh_orderings_are_judged_paired_by_seed():
    from tools.hh_orderings import judge

    by_name = {"dpo": [{"seed": s, "accuracy": a} for s, a in enumerate([0.60, 0.62, 0.59])],
               "forward_kl": [{"seed": s, "accuracy": a} for s, a in enumerate([0.50, 0.53, 0.48])]}
    verdict, numbers = judge(by_name, "accuracy", "dpo", "forward_kl")
    assert verdict == "holds" and "paired" in numbers  # gaps 0.10, 0.09, 0.11
    assert judge(by_name, "accuracy", "forward_kl", "dpo")[0] == "reversed"
    by_name["forward_kl"] = [{"seed": s, "accuracy": a} for s, a in enumerate([0.50, 0.65, 0.40])]
    assert judge(by_name, "accuracy", "dpo", "forward_kl")[0] == "not shown"
    assert judge(by_name, "accuracy", "dpo", "tdpo1") == ("not measured", "—")


def test_lta_table_draws_chance_pairs_generated_with_shuffled_and_judges_its_claims():
    """The `all` row as measured over seeds 0–2: gaps generated − shuffled +0.006, +0.204, +0.254 (mean 0.155,
    t 2.05 on 2 df): the question-specific part is not shown with three seeds; nor is "above chance" (0.367 ± 0.123
    against 1/7: t 3.2 < 4.30), while "above the placeholder prompt" (2%) passes — the floor that flatters."""
    from tools.lta_table import claims, table

    shuffled = [0.218, 0.248, 0.171]
    gaps = [0.006, 0.204, 0.254]
    results = [{"name": "all", "seed": s, "generated": {"acc_greedy": x + g, "acc_sample": x + g, "acc_vote": x + g,
                                                        "vote_gain": 0.0},
                "shuffled": {"acc_greedy": x, "acc_sample": x, "acc_vote": x, "vote_gain": 0.0}}
               for s, (x, g) in enumerate(zip(shuffled, gaps, strict=True))]
    results += [{"name": "placeholder", "seed": s, "placeholder": {"acc_greedy": 0.02, "acc_sample": 0.021,
                                                                   "acc_vote": 0.021, "vote_gain": 0.0}}
                for s in range(3)]
    text = table(results, chance=1 / 7)
    assert "| chance (1 / modulus) | — | — | 0.143 |" in text
    assert "| `all` | +0.006, +0.204, +0.254 | **not shown** |" in text
    judged = {claim: comparison for claim, comparison, _ in claims(results, 1 / 7)}
    assert judged["`all` beats chance (0.143)"].verdict == "not shown"  # 0.224, 0.452, 0.425 against 0.143
    assert judged["`all` beats the untrained placeholder prompt"].verdict == "holds"
    own = judged["`all`: its own thoughts beat shuffled ones (question-specific)"]
    assert own.verdict == "not shown" and own.test == "paired" and own.t == pytest.approx(2.05, abs=0.01)
    assert not any("sft" in claim for claim in judged)  # rows not run are not claimed


def test_seed_section_states_each_verdict_of_the_rule():
    def summary(name: str, seed: int, reward: float) -> RunSummary:
        history = [evaluation(1.0 + 0.5 * seed, reward, 0.01)]
        return RunSummary(name, name.upper(), 0.3, history=history, margins=[0.2, -0.1, 0.3], seed=seed,
                          chosen_mean_logps=[-1.0, -2.0, -0.5], rejected_mean_logps=[-1.5, -1.0, -0.7])

    runs = [summary(name, s, base + 0.01 * s) for s in range(3)
            for name, base in (("dpo", 0.9), ("js", 0.8), ("forward_kl", 0.6))]
    lines = seed_section(runs)
    assert lines[0] == "## Claims judged over seeds" and "t critical value" in lines[2]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| Diversity")}
    assert len(rows) == 1 and "premise: reward falls" in next(iter(rows.values()))
    assert "Not judged" in seed_section(runs[:3])[2]  # one seed per cell
