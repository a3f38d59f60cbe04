"""The frontier's claims judged over seeds: every cell (objective × β) is run with several seeds, every number is
a mean over seeds with its standard error (standard deviation over seeds / √n), and each claim's premise is
checked before the claim (``not testable here`` when the premise does not show on this task).

A difference *holds* when it exceeds twice its standard error ``√(se_a² + se_b²)``; the opposite sign beyond
that is a contradiction; anything smaller is not resolved. Input: one dict per run with ``name``, ``label``,
``beta``, ``seed`` and the per-run scalars of :data:`METRICS` (:func:`run_scalars` makes them from the runs
``python -m tools.frontier --seeds`` writes).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from lit_align.eval import LikelihoodCalibrationError, PreferenceCalibrationError
from tools.frontier.claims import Frontier, RunSummary

Outcome = Literal["holds", "partly", "does not hold", "not testable here", "not measured"]
METRICS = ("reward", "entropy", "distinct_2", "kl_reverse", "accuracy", "seq_kl_gap", "ece_margin", "ece_likelihood",
           "reward_above_dpo")
"""Per-run scalars: end-of-training reward, entropy/token, distinct-2 and KL(π‖π_ref); held-out accuracy;
``seq_kl_gap`` = mean SeqKL(rejected) − mean SeqKL(chosen); the two calibration errors; ``reward_above_dpo`` = the
end reward minus DPO's reward-vs-KL frontier (all DPO runs, every seed, β and checkpoint) at the run's KL."""
DIVERGENCES = ("dpo", "js", "forward_kl")
"""The f-DPO ordering: reverse KL (DPO), then JS, then forward KL."""


@dataclass
class Cell:
    """One objective × β over its seeds."""

    name: str
    label: str
    beta: float
    values: dict[str, list[float]] = field(default_factory=dict)

    def mean_se(self, metric: str) -> tuple[float, float]:
        xs = self.values.get(metric, [])
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
                cell.values.setdefault(metric, []).append(float(run[metric]))
    return table


def compare(a: Cell, b: Cell, metric: str) -> tuple[int, str]:
    """``+1`` when ``a`` exceeds ``b`` on ``metric`` by more than twice the standard error of the difference,
    ``-1`` when it falls short by as much, ``0`` otherwise; and the numbers."""
    (ma, sa), (mb, sb) = a.mean_se(metric), b.mean_se(metric)
    diff, se = ma - mb, (sa**2 + sb**2) ** 0.5
    sign = 1 if diff > 2 * se else -1 if diff < -2 * se else 0
    return sign, f"{ma:.3f} − {mb:.3f} = {diff:+.3f} (2·se {2 * se:.3f})"


def _outcome(results: Sequence[bool], testable: int) -> Outcome:
    if not testable:
        return "not testable here"
    if all(results):
        return "holds"
    return "partly" if any(results) else "does not hold"


def _betas(table: dict[tuple[str, float], Cell]) -> list[float]:
    return sorted({beta for _, beta in table})


def check_diversity_order(table: dict[tuple[str, float], Cell]) -> Verdict:
    """f-DPO: entropy rises from reverse KL through JS to forward KL while reward falls. Premise: reward falls
    from reverse to forward KL (the trade-off the claim is about) beyond the noise."""
    claim = "Diversity (entropy/token) rises from reverse KL to JS to forward KL while reward falls (f-DPO)"
    evidence, results = [], []
    for beta in _betas(table):
        present = [table.get((name, beta)) for name in DIVERGENCES]
        if any(cell is None for cell in present):
            continue
        reverse, js, forward = present
        premise, reward_text = compare(reverse, forward, "reward")
        if premise != 1:
            evidence.append(f"β={beta:g}: premise not shown, reward reverse − forward {reward_text}")
            continue
        steps = [compare(js, reverse, "entropy"), compare(forward, js, "entropy")]
        ok = all(sign == 1 for sign, _ in steps)
        results.append(ok)
        evidence.append(f"β={beta:g}: reward falls ({reward_text}); entropy JS − reverse {steps[0][1]}, forward − "
                        f"JS {steps[1][1]} ({'yes' if ok else 'no'})")
    if not evidence:
        return Verdict(claim, "not measured", [])
    return Verdict(claim, _outcome(results, len(results)), evidence)


def check_kl_balance(table: dict[tuple[str, float], Cell]) -> Verdict:
    """TDPO: under DPO the rejected response's sequential KL grows faster than the chosen one's, and TDPO keeps
    them closer. Premise: DPO's gap SeqKL(rejected) − SeqKL(chosen) is positive beyond the noise."""
    claim = "TDPO keeps the sequential KL of chosen and rejected responses closer than DPO (TDPO)"
    evidence, results = [], []
    for beta in _betas(table):
        dpo = table.get(("dpo", beta))
        tdpo = [table[(name, beta)] for name in ("tdpo1", "tdpo2") if (name, beta) in table]
        if dpo is None or not tdpo or "seq_kl_gap" not in dpo.values:
            continue
        mean, se = dpo.mean_se("seq_kl_gap")
        if not mean > 2 * se:
            evidence.append(f"β={beta:g}: premise not shown, DPO's gap rejected − chosen {mean:+.3f} "
                            f"(2·se {2 * se:.3f})")
            continue
        for cell in tdpo:
            sign, text = compare(dpo, cell, "seq_kl_gap")
            results.append(sign == 1)
            evidence.append(f"β={beta:g}: DPO gap − {cell.label} gap {text} ({'yes' if sign == 1 else 'no'})")
    if not evidence:
        return Verdict(claim, "not measured", [])
    return Verdict(claim, _outcome(results, len(results)), evidence)


def check_reward_above_frontier(table: dict[tuple[str, float], Cell]) -> Verdict:
    """TDPO: TDPO2 reaches a higher reward than DPO at equal KL. Each TDPO2 run's reward above DPO's frontier at
    its KL (``reward_above_dpo``), averaged over seeds, must exceed twice its seed-level standard error. No premise
    beyond DPO's frontier spanning the run's KL (a seed outside it is left out)."""
    claim = "TDPO2 reaches higher reward than DPO at equal KL(π‖π_ref) (TDPO)"
    evidence, results = [], []
    for beta in _betas(table):
        cell = table.get(("tdpo2", beta))
        if cell is None:
            continue
        above = cell.values.get("reward_above_dpo", [])
        if len(above) < 2:
            evidence.append(f"β={beta:g}: {len(above)} seed(s) within DPO's measured KL range, not judged")
            continue
        mean, se = cell.mean_se("reward_above_dpo")
        results.append(mean > 2 * se)
        evidence.append(f"β={beta:g}: reward above DPO's frontier per seed "
                        f"{', '.join(f'{x:+.3f}' for x in above)}; mean {mean:+.3f} (2·se {2 * se:.3f}) "
                        f"({'yes' if results[-1] else 'no'})")
    if not evidence:
        return Verdict(claim, "not measured", [])
    return Verdict(claim, _outcome(results, len(results)), evidence)


def check_ece_changes(table: dict[tuple[str, float], Cell], metric: str, measure: str) -> Verdict:
    """f-DPO: the divergence changes the calibration error. At each β the f-DPO runs' lowest and highest seed
    means must differ by more than twice the standard error of their difference. No premise."""
    claim = f"The divergence changes the calibration error, {measure} (f-DPO)"
    evidence, results = [], []
    for beta in _betas(table):
        present = [c for (name, b), c in table.items() if b == beta and (name in DIVERGENCES or "alpha" in name)
                   and metric in c.values]
        if len(present) < 2:
            continue
        low = min(present, key=lambda c: c.mean_se(metric)[0])
        high = max(present, key=lambda c: c.mean_se(metric)[0])
        sign, text = compare(high, low, metric)
        results.append(sign == 1)
        listed = ", ".join(f"{c.label} {c.text(metric)}" for c in present)
        evidence.append(f"β={beta:g}: {listed}; highest − lowest {text} ({'yes' if sign == 1 else 'no'})")
    if not evidence:
        return Verdict(claim, "not measured", [])
    return Verdict(claim, _outcome(results, len(results)), evidence)


def verdicts(runs: Sequence[dict]) -> list[Verdict]:
    table = cells(runs)
    return [
        check_diversity_order(table),
        check_reward_above_frontier(table),
        check_kl_balance(table),
        check_ece_changes(table, "ece_margin", "reward-margin ECE (lit-align's PreferenceCalibrationError)"),
        check_ece_changes(table, "ece_likelihood", "the f-DPO paper's likelihood ECE (LikelihoodCalibrationError)"),
    ]


def run_scalars(run: RunSummary, dpo: Frontier) -> dict:
    """The per-run numbers :func:`verdicts` judges over seeds, from one run of the sweep and DPO's frontier."""
    f = run.final
    gap = dpo.gap(f)
    margin_ece, likelihood_ece = PreferenceCalibrationError(), LikelihoodCalibrationError()
    margin_ece.update(torch.tensor(run.margins))
    seq_kl_gap = None
    if run.chosen_seq_kl:
        seq_kl_gap = statistics.fmean(run.rejected_seq_kl) - statistics.fmean(run.chosen_seq_kl)
    if run.chosen_mean_logps is not None:
        likelihood_ece.update(torch.tensor(run.chosen_mean_logps), torch.tensor(run.rejected_mean_logps))
    return {
        "name": run.name, "label": run.label, "beta": run.beta, "seed": run.seed, "reward": f["reward"],
        "entropy": f["entropy"], "distinct_2": f["distinct_2"], "kl_reverse": f["kl_reverse"],
        "accuracy": run.accuracy, "seq_kl_gap": seq_kl_gap, "ece_margin": float(margin_ece.compute()),
        "ece_likelihood": float(likelihood_ece.compute()) if run.chosen_mean_logps is not None else None,
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
        return lines + [f"Not judged: the fewest seeds in a cell is {fewest}; run with `--seeds '[0, 1, 2]'` (at least "
                        "3 per cell). Until then the claims above rest on one seed and no run-to-run noise estimate."]
    lines += [f"{fewest}+ seeds per cell; a difference counts when it exceeds twice its seed-level standard error; "
              "a claim whose premise does not show here is *not testable here*.", "",
              "| claim | outcome | numbers |", "|---|---|---|"]
    dpo = Frontier.of(runs)
    for verdict in verdicts([run_scalars(run, dpo) for run in runs]):
        lines.append(f"| {verdict.claim} | **{verdict.outcome}** | {'<br>'.join(verdict.evidence) or '—'} |")
    return lines
