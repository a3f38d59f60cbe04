"""Host memory and step time of a LoRA step against a QLoRA step (4-bit NF4 double-quantised, and 8-bit), side by
side in one run, each arm in a process of its own: a Llama built from its config (about 170M parameters by default,
random init, ``save_pretrained`` once), LoRA r=16 on every linear layer, ``AlignmentModule(DPO)`` with the
adapter-disabled reference, three optimizer steps on pairs of about 200 tokens::

    python -m tools.qlora_memory                 # hidden 1024, 8 layers, vocab 32,000
    python -m tools.qlora_memory --hidden 2048 --layers 4

Per arm it prints the bytes the policy holds (its parameters and buffers, the quantised weights as stored), the
peak resident set once the model is built and after the steps, both above the process's baseline, and the median
step time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.load_memory import peak_bytes, prepare, rss_bytes

ARMS = {"lora": None, "qlora-nf4": {"bits": 4}, "qlora-int8": {"bits": 8}}


def write_pairs(work: Path, words: int = 96) -> None:
    """Pairs whose prompt is ``words`` words and responses half that, over the word-level vocabulary."""
    rows = [{"prompt": " ".join(f"w{4 + (i * 7 + j) % 500}" for j in range(words)),
             "chosen": " " + " ".join(f"w{4 + (i + j * 3) % 500}" for j in range(words // 2)),
             "rejected": " " + " ".join(f"w{4 + (i * 5 + j) % 500}" for j in range(words // 2))} for i in range(16)]
    (work / "long_pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def run_arm(work: Path, arm: str, steps: int) -> dict:
    """One arm in this process: its figures."""
    import torch
    from lightning.pytorch.callbacks import Callback

    from lit_align.data import PreferenceDataModule
    from lit_align.models.policy import LoraSettings, PolicySpec, Quantization
    from lit_align.module import AlignmentModule
    from lit_align.objectives import DPO
    from lit_align.trainer import AlignmentTrainer

    torch.set_num_threads(2)
    baseline, figures, times = rss_bytes(), {}, []

    class Measure(Callback):
        def on_train_start(self, trainer, pl_module):
            policy = pl_module.policy
            figures["held"] = sum(t.nbytes for t in [*policy.parameters(), *policy.buffers()])
            figures["built"] = peak_bytes() - baseline

        def on_train_batch_start(self, *args):
            times.append(time.perf_counter())

        def on_train_batch_end(self, *args):
            times[-1] = time.perf_counter() - times[-1]

    quantization = None if ARMS[arm] is None else Quantization(**ARMS[arm])
    spec = PolicySpec(path=str(work / "model"), lora=LoraSettings(r=16, alpha=32), quantization=quantization)
    module = AlignmentModule(DPO(), spec)
    data = PreferenceDataModule(str(work / "long_pairs.jsonl"), batch_size=2, val_fraction=0.0, max_length=256,
                                max_prompt_length=160, tokenizer=str(work / "model"))
    trainer = AlignmentTrainer(accelerator="cpu", devices=1, max_steps=steps, callbacks=[Measure()], logger=False,
                               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                               limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=str(work))
    trainer.fit(module, data)
    return {**figures, "peak": peak_bytes() - baseline, "step_s": statistics.median(times[1:] or times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", choices=sorted(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_arm(args.work, args.child, args.steps)))
        return
    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        prepare(work, args.hidden, args.layers, args.vocab)
        write_pairs(work)
        size = sum(p.stat().st_size for p in (work / "model").glob("*.safetensors"))
        print(f"model: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}: {size / 2**20:,.0f} MiB fp32")
        print("| arm | policy holds | peak above baseline, built | peak above baseline, after steps | step |")
        print("|---|---|---|---|---|")
        for arm in ARMS:
            command = [sys.executable, "-m", "tools.qlora_memory", "--child", arm, "--work", str(work),
                       "--steps", str(args.steps)]
            result = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=True)
            row = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"| {arm} | {row['held'] / 2**20:,.0f} MiB | {row['built'] / 2**20:,.0f} MiB | "
                  f"{row['peak'] / 2**20:,.0f} MiB | {row['step_s']:.2f} s |")


if __name__ == "__main__":
    main()
