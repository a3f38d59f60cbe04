"""The LTA-Thinker ablation table on the built-in modular-arithmetic task (docs/lta_thinker.md).

    python tools/lta_table.py --workdir .cache/lta_task --seeds 0 1 2 3 4 --jobs 2

Pre-trains (once, cached) the frozen base, then for each configuration and seed trains a thought generator in a
child process (one thread) and measures held-out accuracy: greedy, mean over k = 10 samples, and the majority
vote over them (T 0.7, top-p 0.8, top-k 20). Every trained generator is also evaluated with its thoughts
shuffled across the batch (the control for "the thoughts carry the question"). The floor is the trained placeholder
(``placeholder_trained``): the `sft` row's training with :class:`~lit_align.thinker.NoGenerator`, a trained vector
per slot that is the same for every question; the untrained placeholder row (a base in front of empty slots it
never saw in pre-training) is kept for reference. Each run's result is cached as JSON under ``<workdir>/table``
(a cached run lacking an evaluation its row now makes is run again).

The table gives each row's mean ± standard deviation over seeds, the chance level (1 / modulus), the paired
per-seed gaps generated − shuffled, and the claims docs/lta_thinker.md makes, each judged by the one rule of
:mod:`lit_align.eval.verdict` on greedy accuracy: a 95% t-interval, paired by seed (every row ran the same seeds on
the same base and data), verdict ``holds`` / ``not shown`` / ``reversed``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lit_align.eval.verdict import Comparison, compare, one_sample

LEAK_FREE = dict(gold=False, positional=True)
ALL = (0.33, 0.33, 0.33, 0.0)
ROWS = {
    # name: (description, switches, loss weights (sft, focus, align, variance), thoughts evaluated)
    "placeholder": ("no thoughts: placeholders, untrained (a base that never saw empty slots)", LEAK_FREE, None,
                    ("placeholder",)),
    "placeholder_trained": ("no generator: a trained vector per slot from the placeholder, the same for every "
                            "question (SFT only)", dict(LEAK_FREE, generator="none"), (1.0, 0.0, 0.0, 0.0),
                            ("generated",)),
    "oracle": ("gold intermediate values as hint tokens (upper bound)", LEAK_FREE, None, ("oracle",)),
    "sft": ("SFT only (leak-free, positional)", LEAK_FREE, (1.0, 0.0, 0.0, 0.0), ("generated", "shuffled")),
    "sft_kl": ("SFT + KL (leak-free, positional)", LEAK_FREE, (0.5, 0.0, 0.5, 0.0), ("generated", "shuffled")),
    "all": ("SFT + KL + focus (leak-free, positional)", LEAK_FREE, ALL, ("generated", "shuffled")),
    "authors": ("authors: gold steps in prompt, no positions, all three", dict(gold=True, positional=False), ALL,
                ("generated", "shuffled")),
    "leak": ("gold steps in prompt, positional, all three", dict(gold=True, positional=True), ALL,
             ("generated", "shuffled")),
    "no_positions": ("leak-free, no positions, all three", dict(gold=False, positional=False), ALL,
                     ("generated", "shuffled")),
    "variance": ("leak-free, positional, all three + Gaussian prior (a thought sample per answer)",
                 dict(LEAK_FREE, variance=True), (0.33, 0.33, 0.33, 0.01), ("generated", "shuffled")),
}
TRAINED = [name for name, row in ROWS.items() if row[2] is not None]
CONTROL = "placeholder_trained"
"""The fair floor: trained like the `sft` row, but with :class:`~lit_align.thinker.NoGenerator`, so its slots carry
nothing of the question (the untrained `placeholder` row is a base in front of empty slots it never saw)."""
GENERATORS = [name for name in TRAINED if name != CONTROL]
CLAIMS = [
    # (claim, higher (row, thoughts), lower (row, thoughts)); greedy accuracy
    *((f"`{name}` beats the trained placeholder (no generator; the fair floor)", (name, "generated"),
       (CONTROL, "generated")) for name in GENERATORS),
    *((f"`{name}` beats the untrained placeholder prompt", (name, "generated"), ("placeholder", "placeholder"))
      for name in GENERATORS),
    *((f"`{name}`: its own thoughts beat shuffled ones (question-specific)", (name, "generated"),
       (name, "shuffled")) for name in GENERATORS),
    ("SFT + KL beats SFT only", ("sft_kl", "generated"), ("sft", "generated")),
    ("all three losses beat SFT only", ("all", "generated"), ("sft", "generated")),
    ("the leak hurts, without positions (leak-free beats the authors' prompt)", ("no_positions", "generated"),
     ("authors", "generated")),
    ("the leak hurts, with positions", ("all", "generated"), ("leak", "generated")),
    ("positions hurt (leak-free without beats with)", ("no_positions", "generated"), ("all", "generated")),
    ("the Gaussian prior helps", ("variance", "generated"), ("all", "generated")),
]
"""The comparisons docs/lta_thinker.md states, each ``(claim, higher, lower)``."""


def run(name: str, seed: int, workdir: Path, steps: int) -> dict:
    """Train (when the row has a generator) and evaluate one row for one seed, in this process."""
    import lightning as L
    import torch

    from lit_align.models.policy import PolicySpec
    from lit_align.thinker import (
        BlockPrior,
        GaussianThoughts,
        LatentThoughtModule,
        ModularArithmeticData,
        NoGenerator,
        SamplingSettings,
        ThoughtLoss,
    )
    from lit_align.thinker.self_consistency import evaluate
    from lit_align.thinker.task import oracle_slots
    from lit_align.trainer import AlignmentTrainer

    _, switches, weights, evaluations = ROWS[name]
    L.seed_everything(seed)
    data = ModularArithmeticData(str(workdir), num_train=1500, num_val=500, data_seed=1)
    data.prepare_data()
    data.setup("fit")
    generator = NoGenerator() if switches.get("generator") == "none" else BlockPrior(positional=switches["positional"])
    module = LatentThoughtModule(
        PolicySpec(path=str(workdir / "base")), generator,
        ThoughtLoss(*weights) if weights else ThoughtLoss(1, 0, 0), gold_steps_in_prompt=switches["gold"],
        variance_prior=GaussianThoughts() if switches.get("variance") else None,
        thought_init="placeholder", optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
    )
    started = time.time()
    if weights is not None:
        trainer = AlignmentTrainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                   enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
        trainer.fit(module, data)
    else:
        module.configure_model()
    results = {"name": name, "seed": seed, "seconds": time.time() - started}
    for thoughts in evaluations:
        loader = data.val_dataloader()
        if thoughts == "oracle":
            loader = [dict(b, prompt_ids=oracle_slots(b, b["prompt_ids"], b["prompt_slots"])) for b in loader]
        module.thoughts = "placeholder" if thoughts == "oracle" else thoughts
        results[thoughts] = evaluate(module, loader, data.tokenizer, SamplingSettings(k=10, max_new_tokens=4))
    return results


def table(results: list[dict], chance: float | None = None) -> str:
    """Mean ± standard deviation over seeds of each row and evaluated thoughts, the chance line, the paired
    generated − shuffled gaps and the claims, each judged by :mod:`lit_align.eval.verdict`."""
    if chance is None:
        from lit_align.thinker.task import ArithmeticSettings

        chance = 1 / ArithmeticSettings().modulus
    lines = ["| configuration | thoughts | seeds | greedy | sample (mean of 10) | vote@10 | vote gain |",
             "|---|---|---|---|---|---|---|",
             f"| chance (1 / modulus) | — | — | {chance:.3f} | {chance:.3f} | {chance:.3f} | — |"]
    for name, (description, _, _, evaluations) in ROWS.items():
        rows = [r for r in results if r["name"] == name]
        for thoughts in evaluations:
            held = [r for r in rows if thoughts in r]
            if not held:
                continue
            cells = []
            for key in ("acc_greedy", "acc_sample", "acc_vote", "vote_gain"):
                values = [r[thoughts][key] for r in held]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
            lines.append(f"| `{name}`: {description} | {thoughts} | {len(held)} | " + " | ".join(cells) + " |")
    lines += ["", "Generated − shuffled thoughts, greedy accuracy, paired per seed:", "",
              "| configuration | gaps per seed | verdict | numbers |", "|---|---|---|---|"]
    for name in GENERATORS:
        gaps = {r["seed"]: r["generated"]["acc_greedy"] - r["shuffled"]["acc_greedy"]
                for r in results if r["name"] == name and "generated" in r and "shuffled" in r}
        if gaps:
            judged = one_sample([gaps[s] for s in sorted(gaps)])
            listed = ", ".join(f"{gaps[s]:+.3f}" for s in sorted(gaps))
            lines.append(f"| `{name}` | {listed} | **{judged.verdict}** | {judged.text()} |")
    lines += ["", "| claim (greedy accuracy) | verdict | numbers (means; Δ, interval, t vs critical value) |",
              "|---|---|---|"]
    for claim, judged, means in claims(results, chance):
        lines.append(f"| {claim} | **{judged.verdict}** | {means}: {judged.text()} |")
    return "\n".join(lines)


def claims(results: list[dict], chance: float) -> list[tuple[str, Comparison, str]]:
    """Each claim of :data:`CLAIMS` whose rows were run, and each trained row against chance, judged over seeds."""
    def per_seed(row: str, thoughts: str) -> dict[int, float]:
        return {r["seed"]: r[thoughts]["acc_greedy"] for r in results if r["name"] == row and thoughts in r}

    judged = []
    for name in TRAINED:
        values = per_seed(name, "generated")
        if values:
            judged.append((f"`{name}` beats chance ({chance:.3f})", one_sample([v - chance for v in values.values()]),
                           f"{statistics.fmean(values.values()):.3f} vs {chance:.3f}"))
    for claim, high, low in CLAIMS:
        a, b = per_seed(*high), per_seed(*low)
        if a and b:
            judged.append((claim, compare(a, b),
                           f"{statistics.fmean(a.values()):.3f} vs {statistics.fmean(b.values()):.3f}"))
    return judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path(".cache/lta_task"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per training run (batch 64)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("ROW", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    cache = args.workdir / "table"
    if args.child:
        name, seed = args.child[0], int(args.child[1])
        result = run(name, seed, args.workdir, args.steps)
        (cache / f"{name}-{seed}-{args.steps}.json").write_text(json.dumps(result))
        return
    cache.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    base_command = [sys.executable, __file__, "--workdir", str(args.workdir), "--steps", str(args.steps)]
    subprocess.run([*base_command, "--child", "placeholder", "0"], check=True, env=env)  # builds the base once

    def child(job: tuple[str, int]) -> None:
        path = cache / f"{job[0]}-{job[1]}-{args.steps}.json"
        if not path.is_file() or not set(ROWS[job[0]][3]) <= set(json.loads(path.read_text())):
            subprocess.run([*base_command, "--child", job[0], str(job[1])], check=True, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            print(f"done {job}", flush=True)

    jobs = [(name, seed) for name in args.rows for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(child, jobs))
    results = [json.loads((cache / f"{n}-{s}-{args.steps}.json").read_text()) for n, s in jobs]
    print(table(results))
    (cache / "table.md").write_text(table(results) + "\n")


if __name__ == "__main__":
    main()
