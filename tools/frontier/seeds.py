"""The frontier's claims judged over seeds: every cell (objective × β) is run with several seeds, and each claim
is judged by the one rule of :mod:`lit_align.eval.verdict` — a two-sided 95% t-interval of the effect, paired by
seed where the arms ran the same seeds (here they do: a seed sets the training order and the global RNG of every
objective alike, on the same data and evaluation), Welch's otherwise — with the verdicts ``holds``, ``not shown``
(with the seeds per arm the observed effect would need) and ``reversed``. Each claim's premise is checked first
(``not testable here`` when it does not hold on this task); ``not measured`` when a run it needs is missing.

Input: one dict per run with ``name``, ``label``, ``beta``, ``seed`` and the per-run scalars of :data:`METRICS`
(:func:`run_scalars` makes them from the runs ``python -m tools.frontier --seeds`` writes).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from lit_align.eval import LikelihoodCalibrationError, PreferenceCalibrationError
from lit_align.eval.verdict import Comparison, combine, one_sample
from lit_align.eval.verdict import compare as compare_seeds
from tools.frontier.claims import Frontier, RunSummary

Outcome = Literal["holds", "not shown", "reversed", "not testable here", "not measured"]
METRICS = ("reward", "entropy", "distinct_2", "kl_reverse", "accuracy", "seq_kl_gap", "ece_margin", "ece_likelihood",
           "ece_likelihood_no_eos", "reward_above_dpo")
"""Per-run scalars: end-of-training reward, entropy/token, distinct-2 and KL(π‖π_ref); held-out accuracy;
``seq_kl_gap`` = mean SeqKL(rejected) − mean SeqKL(chosen); the two calibration errors; ``reward_above_dpo`` = the
end reward minus DPO's reward-vs-KL frontier (all DPO runs, every seed, β and checkpoint) at the run's KL."""
DIVERGENCES = ("dpo", "js", "forward_kl")
"""The f-DPO ordering: reverse KL (DPO), then JS, then forward KL."""


@dataclass
class Cell:
    """One objective × β over its seeds: ``values[metric][seed]``."""

    name: str
    label: str
    beta: float
    values: dict[str, dict[int, float]] = field(default_factory=dict)

    def mean_se(self, metric: str) -> tuple[float, float]:
        xs = list(self.values.get(metric, {}).values())
        if not xs:
            return float("nan"), float("nan")
        return statistics.fmean(xs), (statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("inf"))

    def text(self, metric: str) -> str:
        mean, se = self.mean_se(metric)
        return f"{mean:.3f}±{se:.3f}"


@dataclass(frozen=True)
class Verdict:
    claim: str
    outcome: Outcome
    evidence: list[str]


def cells(runs: Sequence[dict]) -> dict[tuple[str, float], Cell]:
    """Group runs by objective and β; a metric a run lacks (``None``) is left out of its cell."""
    table: dict[tuple[str, float], Cell] = {}
    for run in runs:
        cell = table.setdefault((run["name"], run["beta"]), Cell(run["name"], run["label"], run["beta"]))
        for metric in METRICS:
            if run.get(metric) is not None:
                cell.values.setdefault(metric, {})[int(run["seed"])] = float(run[metric])
    return table


def compare(a: Cell, b: Cell, metric: str, level: float = 0.95) -> Comparison:
    """The claim ``metric(a) > metric(b)`` judged over seeds (paired where both cells ran the same seeds)."""
    return compare_seeds(a.values.get(metric, {}), b.values.get(metric, {}), level)


def _said(what: str, a: Cell, b: Cell, metric: str, judged: Comparison) -> str:
    return f"{what} {a.text(metric)} vs {b.text(metric)}: {judged.text()} (**{judged.verdict}**)"


def _outcome(parts: Sequence[Comparison], evidence: list[str]) -> Outcome:
    if parts:
        return combine(parts)
    return "not testable here" if evidence else "not measured"


def _betas(table: dict[tuple[str, float], Cell]) -> list[float]:
    return sorted({beta for _, beta in table})


def check_diversity_order(table: dict[tuple[str, float], Cell]) -> Verdict:
    """f-DPO: entropy rises from reverse KL through JS to forward KL while reward falls. Premise: reward falls
    from reverse to forward KL (the trade-off the claim is about); each step of the ordering is one comparison."""
    claim = "Diversity (entropy/token) rises from reverse KL to JS to forward KL while reward falls (f-DPO)"
    evidence, parts = [], []
    for beta in _betas(table):
        present = [table.get((name, beta)) for name in DIVERGENCES]
        if any(cell is None for cell in present):
            continue
        reverse, js, forward = present
        premise = compare(reverse, forward, "reward")
        if premise.verdict != "holds":
            evidence.append(f"β={beta:g}: premise not shown: " + _said("reward reverse vs forward", reverse, forward,
                                                                          "reward", premise))
            continue
        steps = [compare(js, reverse, "entropy"), compare(forward, js, "entropy")]
        parts += steps
        evidence.append(f"β={beta:g}: premise: reward falls ({premise.text()}); "
                        + _said("entropy JS vs reverse", js, reverse, "entropy", steps[0]) + "; "
                        + _said("forward vs JS", forward, js, "entropy", steps[1]))
    return Verdict(claim, _outcome(parts, evidence), evidence)


def check_kl_balance(table: dict[tuple[str, float], Cell]) -> Verdict:
    """TDPO: under DPO the rejected response's sequential KL grows faster than the chosen one's, and TDPO keeps
    them closer. Premise: DPO's gap SeqKL(rejected) − SeqKL(chosen) is positive (one sample over seeds)."""
    claim = "TDPO keeps the sequential KL of chosen and rejected responses closer than DPO (TDPO)"
    evidence, parts = [], []
    for beta in _betas(table):
        dpo = table.get(("dpo", beta))
        tdpo = [table[(name, beta)] for name in ("tdpo1", "tdpo2") if (name, beta) in table]
        if dpo is None or not tdpo or "seq_kl_gap" not in dpo.values:
            continue
        premise = one_sample(list(dpo.values["seq_kl_gap"].values()))
        if premise.verdict != "holds":
            evidence.append(f"β={beta:g}: premise not shown, DPO's gap rejected − chosen: {premise.text()}")
            continue
        for cell in tdpo:
            judged = compare(dpo, cell, "seq_kl_gap")
            parts.append(judged)
            evidence.append(f"β={beta:g}: " + _said(f"DPO gap vs {cell.label} gap", dpo, cell, "seq_kl_gap", judged))
    return Verdict(claim, _outcome(parts, evidence), evidence)


def check_reward_above_frontier(table: dict[tuple[str, float], Cell]) -> Verdict:
    """TDPO: TDPO2 reaches a higher reward than DPO at equal KL. Each TDPO2 run's reward above DPO's frontier at
    its KL (``reward_above_dpo``) is one value per seed, judged against 0 (one sample). No premise beyond DPO's
    frontier spanning the run's KL (a seed outside it is left out)."""
    claim = "TDPO2 reaches higher reward than DPO at equal KL(π‖π_ref) (TDPO)"
    evidence, parts = [], []
    for beta in _betas(table):
        cell = table.get(("tdpo2", beta))
        if cell is None:
            continue
        above = list(cell.values.get("reward_above_dpo", {}).values())
        if len(above) < 2:
            evidence.append(f"β={beta:g}: {len(above)} seed(s) within DPO's measured KL range, not judged")
            continue
        judged = one_sample(above)
        parts.append(judged)
        evidence.append(f"β={beta:g}: reward above DPO's frontier per seed {', '.join(f'{x:+.3f}' for x in above)}: "
                        f"{judged.text()} (**{judged.verdict}**)")
    return Verdict(claim, _outcome(parts, evidence), evidence)


def check_ece_changes(table: dict[tuple[str, float], Cell], metric: str, measure: str) -> Verdict:
    """f-DPO: the divergence changes the calibration error. At each β the f-DPO runs with the lowest and the
    highest seed mean are compared; as that pair is picked after looking, its interval is Bonferroni-corrected
    for the ``k (k − 1) / 2`` pairs of the ``k`` divergences (level ``1 − 0.05 / m``). No premise."""
    claim = f"The divergence changes the calibration error, {measure} (f-DPO)"
    evidence, parts = [], []
    for beta in _betas(table):
        present = [c for (name, b), c in table.items() if b == beta and (name in DIVERGENCES or "alpha" in name)
                   and metric in c.values]
        if len(present) < 2:
            continue
        low = min(present, key=lambda c: c.mean_se(metric)[0])
        high = max(present, key=lambda c: c.mean_se(metric)[0])
        pairs = len(present) * (len(present) - 1) // 2
        judged = compare(high, low, metric, level=1 - 0.05 / pairs)
        parts.append(judged)
        listed = ", ".join(f"{c.label} {c.text(metric)}" for c in present)
        evidence.append(f"β={beta:g}: {listed}; highest vs lowest ({pairs} pairs): {judged.text()} "
                        f"(**{judged.verdict}**)")
    return Verdict(claim, _outcome(parts, evidence), evidence)


def verdicts(runs: Sequence[dict]) -> list[Verdict]:
    table = cells(runs)
    return [
        check_diversity_order(table),
        check_reward_above_frontier(table),
        check_kl_balance(table),
        check_ece_changes(table, "ece_margin", "reward-margin ECE (lit-align's PreferenceCalibrationError)"),
        check_ece_changes(table, "ece_likelihood", "the f-DPO paper's likelihood ECE (LikelihoodCalibrationError)"),
        check_ece_changes(table, "ece_likelihood_no_eos", "the f-DPO paper's likelihood ECE without the end token "
                          "(the authors' reading, exclude_eos)"),
    ]


def likelihood_ece(chosen_mean_logps: list[float] | None, rejected_mean_logps: list[float] | None) -> float | None:
    """The f-DPO paper's likelihood ECE of a run's held-out mean log-probs (``None`` for a run that lacks them)."""
    if chosen_mean_logps is None:
        return None
    metric = LikelihoodCalibrationError()
    metric.update(torch.tensor(chosen_mean_logps), torch.tensor(rejected_mean_logps))
    return float(metric.compute())


def run_scalars(run: RunSummary, dpo: Frontier) -> dict:
    """The per-run numbers :func:`verdicts` judges over seeds, from one run of the sweep and DPO's frontier."""
    f = run.final
    gap = dpo.gap(f)
    margin_ece = PreferenceCalibrationError()
    margin_ece.update(torch.tensor(run.margins))
    seq_kl_gap = None
    if run.chosen_seq_kl:
        seq_kl_gap = statistics.fmean(run.rejected_seq_kl) - statistics.fmean(run.chosen_seq_kl)
    return {
        "name": run.name, "label": run.label, "beta": run.beta, "seed": run.seed, "reward": f["reward"],
        "entropy": f["entropy"], "distinct_2": f["distinct_2"], "kl_reverse": f["kl_reverse"],
        "accuracy": run.accuracy, "seq_kl_gap": seq_kl_gap, "ece_margin": float(margin_ece.compute()),
        "ece_likelihood": likelihood_ece(run.chosen_mean_logps, run.rejected_mean_logps),
        "ece_likelihood_no_eos": likelihood_ece(run.chosen_mean_logps_no_eos, run.rejected_mean_logps_no_eos),
        "reward_above_dpo": gap[1] if gap is not None else None,
    }


def seed_section(runs: list[RunSummary]) -> list[str]:
    """The report's section of the claims judged over seeds (mean ± seed-level standard error, premises first)."""
    per_cell: dict[tuple[str, float], int] = {}
    for run in runs:
        per_cell[(run.name, run.beta)] = per_cell.get((run.name, run.beta), 0) + 1
    fewest = min(per_cell.values(), default=0)
    lines = ["## Claims judged over seeds", ""]
    if fewest < 3:
        return lines + [f"Not judged: the fewest seeds in a cell is {fewest}; run with `--seeds '[0, 1, 2, 3, 4]'` "
                        "(at least 3 per cell, 5 to resolve effects of the size of the seed noise). Until then the "
                        "claims above rest on one seed and no run-to-run noise estimate."]
    lines += [f"{fewest}+ seeds per cell. Each claim is judged by `lit_align.eval.verdict`: the two-sided 95% "
              "t-interval of the effect, paired by seed (every objective ran the same seeds), with the t critical "
              "value for its degrees of freedom; **holds** when the interval lies above 0, **reversed** below, "
              "**not shown** otherwise (with the seeds per arm the observed effect would need). A claim of several "
              "comparisons holds when each does; a claim whose premise does not show here is *not testable here*.",
              "", "| claim | verdict | numbers (mean ± se over seeds; Δ, interval, t vs critical value) |",
              "|---|---|---|"]
    dpo = Frontier.of(runs)
    for verdict in verdicts([run_scalars(run, dpo) for run in runs]):
        lines.append(f"| {verdict.claim} | **{verdict.outcome}** | {'<br>'.join(verdict.evidence) or '—'} |")
    return lines
