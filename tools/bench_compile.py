"""``model.compile: true`` against eager: compile time, graphs compiled and tokens/s of a DPO fit.

Setup (once, in ``--workdir``): a byte-level BPE tokenizer trained on the HH-RLHF pairs' text and a random-init Llama
of about 16M parameters (6 layers, hidden 384, GQA 6/2 heads, vocab 8192: ``tools/bench.py``'s model), saved with
``save_pretrained``. Each arm is one fresh process fitting ``AlignmentModule(DPO(), compile=...)`` with a frozen-copy
reference on the HH pairs (``data/hh-rlhf-harmless-base-test.jsonl.gz``) in lit-align's default layout (pairs packed,
prompt-shared, rows of about 512 tokens: row counts and lengths change every batch), the same seeded batches in
every arm:

- ``eager``: no compilation.
- ``compiled``: ``compile=True`` with an empty inductor cache (``TORCHINDUCTOR_CACHE_DIR`` in the workdir): the
  cold compile a first run pays.
- ``compiled-warm``: the same again, reading the cache the ``compiled`` arm left: what a restarted run pays.

The cold ``compiled`` arm runs once, first; then ``eager`` and ``compiled-warm`` alternate for ``--rounds`` rounds,
each with ``--threads`` torch threads (default 1, as ``tools/bench.py``'s reported numbers). A step is timed from the
end of the previous one to its own end. Reported per arm (medians over its runs): the wall seconds of the first
step and of the first ``--warmup`` steps, the compile overhead (the warm-up seconds minus ``--warmup`` median eager
steps), the graphs dynamo compiled and the steps at which it did, seconds per step over the ``--steps`` timed
steps after the warm-up, and tokens per wall second and per CPU second of the process (non-pad tokens of prompt +
chosen and prompt + rejected, as ``tools/bench.py`` counts them; on a shared machine the CPU-second rate is the
steadier one). The first steps' losses of every arm are printed, to show they agree. Run::

    python -m tools.bench_compile                    # about 10 minutes on 2 CPU cores, 1 thread per arm
    python -m tools.bench_compile --device cuda      # on a GPU
    python -m tools.bench_compile --quick            # a smoke test: tiny model, few steps
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH_FILE = ROOT / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"
ARMS = ("eager", "compiled", "compiled-warm")


def prepare(args: argparse.Namespace, workdir: Path) -> int:
    """The tokenizer and the model; returns the model's parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lit_align.tasks.tokenizer import train_bpe_tokenizer

    size = (dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2) if args.quick else
            dict(vocab_size=8192, hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                 num_key_value_heads=2))
    with gzip.open(args.data, "rt", encoding="utf-8") as handle:
        texts = [row["chosen"] + row["rejected"] for row in map(json.loads, handle)]
    train_bpe_tokenizer(texts, size["vocab_size"]).save_pretrained(workdir / "tokenizer")
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(LlamaConfig(pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=2048,
                                         **size))
    model.save_pretrained(workdir / "model")
    return sum(p.numel() for p in model.parameters())


def run_arm(spec: dict) -> dict:
    """One fit; per step: wall seconds, tokens, the graphs compiled so far, the loss of the first steps."""
    from functools import partial

    import torch
    from lightning.pytorch.callbacks import Callback
    from torch._dynamo.utils import counters

    from lit_align.data import PreferenceDataModule
    from lit_align.data.collator import sequence_tokens
    from lit_align.models.policy import PolicySpec
    from lit_align.module import AlignmentModule
    from lit_align.objectives import DPO
    from lit_align.trainer import AlignmentTrainer

    record = {"times": [], "cpu_times": [], "tokens": [], "graphs": [], "losses": []}

    class StepTimer(Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.last = time.perf_counter(), time.process_time()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            record["tokens"].append(int(sequence_tokens(batch)))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"].item()  # the step's end (a device sync)
            now = time.perf_counter(), time.process_time()
            record["times"].append(now[0] - self.last[0])
            record["cpu_times"].append(now[1] - self.last[1])
            record["graphs"].append(counters["stats"]["unique_graphs"])
            record["losses"].append(loss)
            self.last = now

    torch.manual_seed(spec["seed"])
    module = AlignmentModule(DPO(beta=0.1), PolicySpec(path=spec["model"]), compile=spec["compile"],
                             optimizer=partial(torch.optim.AdamW, lr=1e-5, weight_decay=0.0))
    data = PreferenceDataModule(path=spec["data"], tokenizer=spec["tokenizer"], row_format="hh", max_length=512,
                                max_prompt_length=384, batch_size=spec["batch_size"], val_fraction=0.0,
                                seed=spec["seed"])
    trainer = AlignmentTrainer(max_steps=spec["total_steps"], accelerator="cpu" if spec["device"] == "cpu" else "gpu",
                               devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                               enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                               default_root_dir=spec["root"], callbacks=[StepTimer()])
    trainer.fit(module, data)
    return record


def launch(arm: str, args: argparse.Namespace, workdir: Path, index: int) -> dict:
    """Run one arm in a fresh process (its inductor cache in the workdir)."""
    spec = dict(arm=arm, compile=arm != "eager", threads=args.threads, model=str(workdir / "model"),
                tokenizer=str(workdir / "tokenizer"),
                data=args.data, batch_size=args.batch_size, total_steps=args.warmup + args.steps, seed=args.seed,
                device=args.device, root=str(workdir / "runs" / f"{arm}-{index}"),
                result=str(workdir / f"{arm}-{index}.json"))
    (workdir / f"{arm}-{index}.spec.json").write_text(json.dumps(spec))
    if arm == "compiled":  # a cold start
        shutil.rmtree(workdir / "inductor", ignore_errors=True)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(workdir / "inductor"), "TOKENIZERS_PARALLELISM": "false"}
    with open(workdir / f"{arm}-{index}.log", "w") as log:
        command = [sys.executable, "-m", "tools.bench_compile", "--child", str(workdir / f"{arm}-{index}.spec.json")]
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"arm {arm} failed; see {workdir / f'{arm}-{index}.log'}")
    return json.loads(Path(spec["result"]).read_text())


def summarise(runs: dict[str, list[dict]], warmup: int) -> dict[str, dict]:
    """Per arm, medians over its runs: wall seconds of the first step and of the warm-up, the compile overhead
    (warm-up seconds minus as many median eager steps), seconds per timed step, tokens per wall second and per
    process CPU second over the timed steps (CPU seconds count this process only, not inductor's compile workers)."""
    steady_eager = statistics.median(t for run in runs["eager"] for t in run["times"][warmup:])
    summary = {}
    for arm, arm_runs in runs.items():
        timed = slice(warmup, None)
        run = arm_runs[0]
        before = [0, *run["graphs"][:-1]]
        compiled_at = [step for step, (now, then) in enumerate(zip(run["graphs"], before, strict=True)) if now > then]
        summary[arm] = {
            "runs": len(arm_runs), "first_step_s": statistics.median(r["times"][0] for r in arm_runs),
            "warmup_s": statistics.median(sum(r["times"][:warmup]) for r in arm_runs),
            "compile_overhead_s": statistics.median(sum(r["times"][:warmup]) for r in arm_runs) - warmup * steady_eager,
            "graphs": run["graphs"][-1], "compiled_at_steps": compiled_at,
            "s_per_step": statistics.median(t for r in arm_runs for t in r["times"][timed]),
            "tokens_per_s": statistics.median(sum(r["tokens"][timed]) / sum(r["times"][timed]) for r in arm_runs),
            "tokens_per_cpu_s": statistics.median(sum(r["tokens"][timed]) / sum(r["cpu_times"][timed])
                                                  for r in arm_runs),
            "first_losses": run["losses"][:3]}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(HH_FILE))
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (the compiles happen here)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps after the warm-up")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="eager and compiled-warm runs, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per arm (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None, help="write the summary as JSON here")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(Path(args.child).read_text())
        if spec["threads"]:
            import torch

            torch.set_num_threads(spec["threads"])
        Path(spec["result"]).write_text(json.dumps(run_arm(spec)))
        return
    if args.quick:
        args.warmup, args.steps = 2, 3
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_compile_"))
    workdir.mkdir(parents=True, exist_ok=True)
    parameters = prepare(args, workdir)
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}
    for index, arm in enumerate(["compiled"] + ["eager", "compiled-warm"] * args.rounds):
        runs[arm].append(launch(arm, args, workdir, index))
    summary = summarise(runs, args.warmup)
    print(f"model: {parameters / 1e6:.1f}M parameters, device {args.device}, threads {args.threads or 'default'}, "
          f"{args.warmup} warm-up + {args.steps} timed steps of {args.batch_size} pairs, {args.rounds} rounds; "
          f"workdir {workdir}")
    print("| arm | runs | first step s | warm-up s | compile overhead s | graphs (at steps) | s/step | tokens/s | "
          "tokens/CPU-s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arm, row in summary.items():
        print(f"| {arm} | {row['runs']} | {row['first_step_s']:.1f} | {row['warmup_s']:.1f} | "
              f"{row['compile_overhead_s']:.1f} | {row['graphs']} ({row['compiled_at_steps']}) | "
              f"{row['s_per_step']:.2f} | {row['tokens_per_s']:.0f} | {row['tokens_per_cpu_s']:.0f} |")
    for arm, row in summary.items():
        print(f"{arm} first losses: {row['first_losses']}")
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
