"""Figures of a sweep of objectives × β (``python -m tools.frontier``): the reward-vs-KL frontier, diversity against
reward, and calibration. Needs matplotlib (``pip install lit-align[eval]``); drawn with the Agg backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tools.frontier.claims import RunSummary, calibration, pareto_frontier

FDPO_FAMILY = ("dpo", "alpha_0.3", "js", "alpha_0.5", "alpha_0.7", "forward_kl")
TOKEN_LEVEL = ("dpo", "tdpo1", "tdpo2", "fpo")
COLORS = {
    "dpo": "#1f77b4",
    "alpha_0.3": "#17becf",
    "js": "#2ca02c",
    "alpha_0.5": "#bcbd22",
    "alpha_0.7": "#ff7f0e",
    "forward_kl": "#d62728",
    "tdpo1": "#9467bd",
    "tdpo2": "#e377c2",
    "fpo": "#8c564b",
}
MARKERS = ("o", "s", "^", "D", "v", "P")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _marker(betas: Sequence[float], beta: float) -> str:
    return MARKERS[sorted(set(betas)).index(beta) % len(MARKERS)]


def _labels(runs: Sequence[RunSummary], names: Sequence[str]) -> list[tuple[str, str]]:
    seen = {run.name: run.label for run in runs}
    return [(name, seen[name]) for name in names if name in seen]


def _beta_handles(betas: Sequence[float]) -> list:
    """Legend entries for the marker of each β and for the reference."""
    from matplotlib.lines import Line2D

    def entry(marker: str, color: str, label: str, size: float = 7) -> Line2D:
        return Line2D([], [], ls="", marker=marker, color=color, markersize=size, label=label)

    handles = [entry(_marker(betas, b), "grey", f"β={b:g}") for b in sorted(set(betas))]
    return [*handles, entry("*", "black", "SFT reference", 11)]


def _kl_axis(ax, values: Sequence[float]) -> None:
    """A symlog KL axis (linear below 1 nat) with plain tick labels."""
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.6)
    top = max([1.0, *values])
    ticks = [t for t in (0, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500) if t <= top * 1.2]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])


def plot_frontier(runs: Sequence[RunSummary], path: str | Path) -> None:
    """Mean oracle reward of samples against ``KL(π_θ ‖ π_ref)``: one panel for the f-DPO divergences, one for
    DPO against the token- and feature-level objectives; thin lines follow each run along training, markers
    are its end (with ± one standard error of both estimates), the dashed line is DPO's Pareto frontier."""
    plt = _pyplot()
    betas = [run.beta for run in runs]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    dpo_points = [(h["kl_reverse"], h["reward"]) for run in runs if run.name == "dpo" for h in run.history]
    frontier = pareto_frontier(dpo_points)
    for ax, names, title in (
        (axes[0], FDPO_FAMILY, "f-DPO divergences"),
        (axes[1], TOKEN_LEVEL, "DPO vs TDPO / FPO"),
    ):
        for name, label in _labels(runs, names):
            for run in (r for r in runs if r.name == name):
                kl = [h["kl_reverse"] for h in run.history]
                reward = [h["reward"] for h in run.history]
                ax.plot(kl, reward, color=COLORS.get(name), alpha=0.35, lw=1)
                end = run.history[-1]
                ax.errorbar(kl[-1], reward[-1], xerr=end.get("kl_reverse_se"), yerr=end.get("reward_se"),
                            fmt="none", ecolor=COLORS.get(name), alpha=0.6, lw=1, zorder=2)
                ax.scatter(kl[-1], reward[-1], color=COLORS.get(name), marker=_marker(betas, run.beta), s=55,
                           edgecolor="black", linewidth=0.5, zorder=3)
            ax.plot([], [], color=COLORS.get(name), lw=3, label=label)
        if len(frontier):
            ax.plot(frontier[:, 0], frontier[:, 1], ls="--", color="grey", lw=1, label="DPO Pareto frontier")
        first = runs[0].history[0]
        ax.scatter(first["kl_reverse"], first["reference_reward"], marker="*", color="black", s=150, zorder=4)
        _kl_axis(ax, [h["kl_reverse"] for run in runs for h in run.history])
        ax.set_xlabel("KL(π_θ ‖ π_ref) of samples (nats, symlog scale)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        first_legend = ax.legend(loc="lower right", fontsize=8)
        ax.add_artist(first_legend)
        ax.legend(handles=_beta_handles(betas), loc="upper left", fontsize=8)
    axes[0].set_ylabel("mean oracle reward of samples")
    fig.suptitle("Reward vs KL on the controlled-sentiment task (lines: along training; markers: end)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_diversity(runs: Sequence[RunSummary], path: str | Path) -> None:
    """Predictive entropy per token and distinct-2 of samples against their reward, at the end of each run."""
    plt = _pyplot()
    betas = [run.beta for run in runs]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, ylabel in (
        (axes[0], "entropy", "predictive entropy per token (nats)"),
        (axes[1], "distinct_2", "distinct-2 of samples"),
    ):
        for name, label in _labels(runs, FDPO_FAMILY + TOKEN_LEVEL[1:]):
            mine = sorted((r for r in runs if r.name == name), key=lambda r: r.beta)
            ax.plot([r.final["reward"] for r in mine], [r.final[key] for r in mine], color=COLORS.get(name),
                    alpha=0.5, lw=2, label=label)
            for run in mine:
                ax.scatter(run.final["reward"], run.final[key], color=COLORS.get(name),
                           marker=_marker(betas, run.beta), s=55, edgecolor="black", linewidth=0.5, zorder=3)
        first = runs[0].history[0]
        ax.scatter(first["reference_reward"], first[f"reference_{key}"], marker="*", color="black", s=150, zorder=4)
        ax.set_xlabel("mean oracle reward of samples")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    handles = axes[0].get_legend_handles_labels()[0] + _beta_handles(betas)
    fig.legend(handles=handles, loc="lower center", ncol=7, fontsize=8, frameon=False)
    fig.suptitle("Diversity vs reward at the end of training (lines join the β values of one objective)")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability_bins(margins: Sequence[float], n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean confidence, accuracy and count per non-empty confidence bin of ``σ(margin)`` (confidence
    ``max(p, 1 - p)``, correct when ``p > 1/2``), the bins of the ECE."""
    p = 0.5 * (1.0 + np.tanh(0.5 * np.asarray(margins, dtype=float)))
    confidence = np.maximum(p, 1 - p)
    correct = p > 0.5
    index = np.clip(np.floor(confidence * n_bins).astype(int), 0, n_bins - 1)
    rows = [(confidence[index == b].mean(), correct[index == b].mean(), (index == b).sum())
            for b in range(n_bins) if (index == b).any()]
    conf, acc, count = (np.asarray(column) for column in zip(*rows, strict=True)) if rows else (np.zeros(0),) * 3
    return conf, acc, count


def plot_calibration(runs: Sequence[RunSummary], path: str | Path, reliability_beta: float | None = None) -> None:
    """Held-out ECE (10 bins, bootstrap standard error) of every run, and the reliability diagram of the f-DPO
    divergences at one β (default: the middle one)."""
    plt = _pyplot()
    betas = sorted({run.beta for run in runs})
    reliability_beta = betas[len(betas) // 2] if reliability_beta is None else reliability_beta
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1.4, 1]})
    names = _labels(runs, FDPO_FAMILY + TOKEN_LEVEL[1:])
    width = 0.8 / max(1, len(betas))
    for j, beta in enumerate(betas):
        xs, eces, errors = [], [], []
        for i, (name, _) in enumerate(names):
            run = next((r for r in runs if r.name == name and r.beta == beta), None)
            if run is not None:
                ece, se = calibration(run.margins)
                xs.append(i + (j - (len(betas) - 1) / 2) * width)
                eces.append(ece)
                errors.append(se)
        axes[0].bar(xs, eces, width, yerr=errors, capsize=2, label=f"β={beta:g}", alpha=0.85)
    axes[0].set_xticks(range(len(names)), [label for _, label in names], rotation=30, ha="right", fontsize=8)
    axes[0].set_ylabel("ECE of σ(reward margin), held-out pairs")
    axes[0].set_title("Expected calibration error (10 bins; ± bootstrap s.e.)")
    axes[0].grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    ax = axes[1]
    ax.plot([0.5, 1], [0.5, 1], color="black", lw=1, ls=":", label="perfect calibration")
    for name, label in _labels(runs, FDPO_FAMILY):
        run = next((r for r in runs if r.name == name and r.beta == reliability_beta), None)
        if run is not None:
            conf, acc, _ = reliability_bins(run.margins)
            ax.plot(conf, acc, marker="o", color=COLORS.get(name), label=label)
    ax.set_xlabel("confidence max(p, 1 − p)")
    ax.set_ylabel("accuracy (chosen response picked)")
    ax.set_title(f"Reliability of the f-DPO divergences at β={reliability_beta:g}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
