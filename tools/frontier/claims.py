"""The papers' claims, checked one by one on the results of a sweep of objectives × β (``python -m tools.frontier``).

Each check returns a :class:`Verdict`: ``holds``, ``partly`` (at some β only), ``does not hold`` or ``not
measured`` (a run it needs is missing), with the numbers behind it, one line per β. A claim is judged on
the end-of-training point of each run unless stated otherwise; nothing is tuned to make it hold.

1. f-DPO (Wang et al. 2023): diversity rises from reverse KL through JS / α-divergences to forward KL, while
   reward falls (:func:`check_diversity_order`).
2. TDPO (Zeng et al. 2024): TDPO2 reaches a higher reward than DPO at the same ``KL(π_θ ‖ π_ref)``
   (:func:`check_reward_at_equal_kl`).
3. TDPO: the sequential KL of chosen and rejected responses stays closer under TDPO than under DPO
   (:func:`check_kl_balance`).
4. f-DPO: the divergence changes the expected calibration error (:func:`check_ece_changes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torchmetrics.wrappers import BootStrapper

from lit_align.eval.metrics import PreferenceCalibrationError

Outcome = Literal["holds", "partly", "does not hold", "not measured"]


@dataclass(frozen=True)
class RunSummary:
    """What one alignment run of the sweep produced."""

    name: str
    """Objective key, e.g. ``dpo``, ``js``, ``alpha_0.5``, ``tdpo2``."""
    label: str
    beta: float
    history: list[dict[str, float]]
    """The evaluations of :class:`~lit_align.eval.SamplingEvaluation`, in step order."""
    margins: list[float]
    """Reward margin of every held-out pair at the end of training."""
    chosen_seq_kl: list[float] | None = None
    rejected_seq_kl: list[float] | None = None
    seconds: float = float("nan")
    seed: int = 0
    chosen_mean_logps: list[float] | None = None
    """The policy's mean token log-prob of each held-out chosen response (for the likelihood ECE)."""
    rejected_mean_logps: list[float] | None = None
    chosen_mean_logps_no_eos: list[float] | None = None
    """The same without each response's final end token (the f-DPO authors' reading, ``exclude_eos``)."""
    rejected_mean_logps_no_eos: list[float] | None = None

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1]

    @property
    def accuracy(self) -> float:
        """Held-out implicit-reward accuracy at the end (ties count as wrong)."""
        return sum(m > 0 for m in self.margins) / max(1, len(self.margins))


@dataclass(frozen=True)
class Verdict:
    claim: str
    outcome: Outcome
    evidence: list[str]


def _outcome(results: Sequence[bool]) -> Outcome:
    if not results:
        return "not measured"
    if all(results):
        return "holds"
    return "partly" if any(results) else "does not hold"


def _by_beta(runs: Sequence[RunSummary]) -> dict[float, dict[str, RunSummary]]:
    table: dict[float, dict[str, RunSummary]] = {}
    for run in runs:
        table.setdefault(run.beta, {})[run.name] = run
    return dict(sorted(table.items()))


def check_diversity_order(
    runs: Sequence[RunSummary],
    reverse: str = "dpo",
    middle: Sequence[str] = ("js", "alpha_0.3", "alpha_0.5", "alpha_0.7"),
    forward: str = "forward_kl",
) -> Verdict:
    """At each β: entropy (and distinct-2) ordered reverse KL < mean of the middle divergences < forward KL, and
    reward ordered the other way."""
    claim = "Diversity rises from reverse KL to JS/α to forward KL while reward falls (f-DPO)"
    results, evidence = [], []
    for beta, named in _by_beta(runs).items():
        mids = [named[m] for m in middle if m in named]
        if reverse not in named or forward not in named or not mids:
            continue

        def trio(key: str, named=named, mids=mids) -> tuple[float, float, float]:
            mid = float(np.mean([run.final[key] for run in mids]))
            return named[reverse].final[key], mid, named[forward].final[key]

        entropy, distinct, reward = trio("entropy"), trio("distinct_2"), trio("reward")
        diverse = entropy[0] < entropy[1] < entropy[2]
        falls = reward[0] > reward[1] > reward[2]
        results.append(diverse and falls)
        evidence.append(
            f"β={beta:g}: entropy/token {_arrow(entropy)} ({_yes(diverse)}); distinct-2 {_arrow(distinct)}; "
            f"reward {_arrow(reward)} ({_yes(falls)})"
        )
    return Verdict(claim, _outcome(results), evidence)


def pareto_frontier(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """The points ``(kl, reward)`` that no other point beats on both (lower KL and higher reward), sorted by
    KL, shape ``(m, 2)``."""
    best = -np.inf
    frontier = []
    for kl, reward in sorted(points, key=lambda p: (p[0], -p[1])):
        if reward > best:
            frontier.append((kl, reward))
            best = reward
    return np.asarray(frontier, dtype=float).reshape(-1, 2)


@dataclass(frozen=True)
class Frontier:
    """A baseline's reward-vs-KL frontier: the Pareto points of all its runs' evaluations (every β, every
    checkpoint), with the sampling standard error of each point's reward."""

    points: np.ndarray
    noise: dict[tuple[float, float], float]

    @classmethod
    def of(cls, runs: Sequence[RunSummary], baseline: str = "dpo") -> Frontier:
        base = [h for run in runs if run.name == baseline for h in run.history]
        return cls(pareto_frontier([(h["kl_reverse"], h["reward"]) for h in base]),
                   {(h["kl_reverse"], h["reward"]): h.get("reward_se", 0.0) for h in base})

    def gap(self, evaluation: dict[str, float]) -> tuple[float, float, float] | None:
        """For an evaluation's (KL, reward): the frontier's reward at that KL (linearly interpolated), the
        evaluation's reward above it, and twice the combined standard error of the sampled rewards (its own and
        the larger of the two frontier points it falls between; the noise of the KL estimates is not included).
        ``None`` where the KL lies outside the frontier's range."""
        kl, frontier = evaluation["kl_reverse"], self.points
        if len(frontier) < 2 or not frontier[0, 0] <= kl <= frontier[-1, 0]:
            return None
        reference = float(np.interp(kl, frontier[:, 0], frontier[:, 1]))
        right = min(int(np.searchsorted(frontier[:, 0], kl)), len(frontier) - 1)
        neighbours = [self.noise[tuple(frontier[i])] for i in {max(0, right - 1), right}]
        margin = 2 * float(np.hypot(evaluation.get("reward_se", 0.0), max(neighbours)))
        return reference, evaluation["reward"] - reference, margin


def check_reward_at_equal_kl(runs: Sequence[RunSummary], candidate: str = "tdpo2", baseline: str = "dpo") -> Verdict:
    """Each ``candidate`` run's final (KL, reward) against ``baseline``'s :class:`Frontier`, where the KL lies
    within it: higher when its reward exceeds the frontier's by more than twice the combined standard error."""
    claim = "TDPO2 reaches higher reward than DPO at equal KL(π‖π_ref) (TDPO)"
    frontier = Frontier.of(runs, baseline)
    results, evidence = [], []
    for run in sorted((r for r in runs if r.name == candidate), key=lambda r: r.beta):
        kl, reward = run.final["kl_reverse"], run.final["reward"]
        gap = frontier.gap(run.final)
        if gap is None:
            evidence.append(f"β={run.beta:g}: KL {kl:.2f} outside DPO's measured range, not compared")
            continue
        reference, above, margin = gap
        higher = above > margin
        results.append(higher)
        evidence.append(
            f"β={run.beta:g}: KL {kl:.2f}, reward {reward:.3f} vs DPO frontier {reference:.3f} "
            f"({above:+.3f}, 2·se {margin:.3f}: {_yes(higher)})"
        )
    return Verdict(claim, _outcome(results), evidence)


def check_kl_balance(
    runs: Sequence[RunSummary], candidates: Sequence[str] = ("tdpo1", "tdpo2"), baseline: str = "dpo"
) -> Verdict:
    """At each β: ``|SeqKL(y_l) - SeqKL(y_w)|`` on held-out pairs, end of training, smaller for every candidate
    than for the baseline."""
    claim = "TDPO keeps the sequential KL of chosen and rejected responses closer than DPO (TDPO)"
    results, evidence = [], []
    for beta, named in _by_beta(runs).items():
        present = [c for c in candidates if c in named and named[c].chosen_seq_kl is not None]
        if baseline not in named or named[baseline].chosen_seq_kl is None or not present:
            continue
        base_gap = _kl_gap(named[baseline])
        parts = [f"DPO {_kl_pair(named[baseline])}"]
        closer = []
        for name in present:
            closer.append(abs(_kl_gap(named[name])) < abs(base_gap))
            parts.append(f"{named[name].label} {_kl_pair(named[name])}")
        results.append(all(closer))
        evidence.append(f"β={beta:g}: rejected − chosen: " + "; ".join(parts) + f" ({_yes(all(closer))})")
    return Verdict(claim, _outcome(results), evidence)


def _kl_gap(run: RunSummary) -> float:
    return float(np.mean(run.rejected_seq_kl) - np.mean(run.chosen_seq_kl))


def _kl_pair(run: RunSummary) -> str:
    return f"{np.mean(run.rejected_seq_kl):.2f} − {np.mean(run.chosen_seq_kl):.2f} = {_kl_gap(run):+.2f}"


def calibration(margins: Sequence[float], n_bins: int = 10, num_bootstraps: int = 200, seed: int = 0):
    """ECE of ``σ(margin)`` (:class:`~lit_align.eval.metrics.PreferenceCalibrationError`) and its bootstrap
    standard error over the pairs, ``(ece, se)``."""
    values = torch.tensor(list(margins), dtype=torch.float32)
    metric = PreferenceCalibrationError(n_bins=n_bins)
    metric.update(values)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        boot = BootStrapper(PreferenceCalibrationError(n_bins=n_bins), num_bootstraps, sampling_strategy="multinomial")
        boot.update(values)
        spread = boot.compute()["std"]
    return float(metric.compute()), float(spread)


def check_ece_changes(
    runs: Sequence[RunSummary],
    divergences: Sequence[str] = ("dpo", "alpha_0.3", "js", "alpha_0.5", "alpha_0.7", "forward_kl"),
) -> Verdict:
    """At each β: the f-DPO divergences' held-out ECEs differ by more than twice the combined bootstrap standard
    error of the most and least calibrated (sampling noise of the held-out pairs; run-to-run noise of training is
    not included)."""
    claim = ("The divergence changes the reward-margin ECE (lit-align's measure; the f-DPO paper's is the "
             "likelihood ECE, LikelihoodCalibrationError)")
    results, evidence = [], []
    for beta, named in _by_beta(runs).items():
        present = [named[d] for d in divergences if d in named]
        if len(present) < 2:
            continue
        eces = {run.label: calibration(run.margins) for run in present}
        low = min(eces, key=lambda k: eces[k][0])
        high = max(eces, key=lambda k: eces[k][0])
        spread = eces[high][0] - eces[low][0]
        noise = 2 * float(np.hypot(eces[high][1], eces[low][1]))
        results.append(spread > noise)
        listed = ", ".join(f"{label} {ece:.3f}±{se:.3f}" for label, (ece, se) in eces.items())
        evidence.append(f"β={beta:g}: {listed}; spread {spread:.3f} vs 2·se {noise:.3f} ({_yes(spread > noise)})")
    return Verdict(claim, _outcome(results), evidence)


def _arrow(values: Sequence[float]) -> str:
    return " → ".join(f"{v:.3f}" for v in values)


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"
