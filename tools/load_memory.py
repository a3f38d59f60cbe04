"""Host memory of building the policy and its frozen-copy reference under FSDP2, per process: 2 processes (gloo,
CPU, 127.0.0.1), a Llama built from its config (about 220M parameters by default, random init, ``save_pretrained``
once), ``AlignmentModule(DPO)`` through Lightning's ``ModelParallelStrategy`` up to the first training step::

    python tools/load_memory.py                 # lit-align's loading: meta device, each process reads its shards
    python tools/load_memory.py --whole         # the old way: from_pretrained in every process + a deep copy

Per rank it prints the resident set before ``fit`` (the baseline), the peak (``ru_maxrss``) when training starts,
the bytes of the policy's and reference's shards the process holds, and the loading overhead: peak − baseline −
held shards, as a fraction of the fp32 model size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def prepare(work: Path, hidden: int, layers: int) -> None:
    """The model, a word-level tokenizer over its vocabulary and a few rows, in ``work``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                         num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=4,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(work / "model")
    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(4, 512)]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(work / "model")
    rows = [{"prompt": f"w{4 + i} w5 w6", "chosen": " w7 w8", "rejected": " w9"} for i in range(8)]
    (work / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


def rank_run(work: Path, whole: bool) -> None:
    """One process of the 2-process run (Lightning starts the other): its figures to ``rank<r>.json``."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.tensor import DTensor

    import lit_align.module
    from lit_align.data import PreferenceDataModule
    from lit_align.module import AlignmentModule
    from lit_align.objectives import DPO
    from lit_align.policy import PolicySpec
    from lit_align.trainer import AlignmentTrainer

    if whole:
        lit_align.module.empty_base = lambda spec: None
    baseline = rss_bytes()

    class Measure(Callback):
        def on_train_start(self, trainer, pl_module):
            models = [pl_module.policy, pl_module.reference.model]
            held = sum((p.to_local() if isinstance(p, DTensor) else p).nbytes for m in models for p in m.parameters())
            size = sum(p.numel() for p in pl_module.policy.parameters()) * 4
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            figures = {"rank": trainer.global_rank, "baseline": baseline, "peak": peak, "held": held,
                       "fp32_size": size, "overhead": (peak - baseline - held) / size}
            (work / f"rank{trainer.global_rank}.json").write_text(json.dumps(figures))
            trainer.should_stop = True

    module = AlignmentModule(DPO(), PolicySpec(path=str(work / "model")))
    data = PreferenceDataModule(str(work / "pairs.jsonl"), batch_size=1, val_fraction=0.0, max_length=16,
                                max_prompt_length=8, tokenizer=str(work / "model"))
    L.seed_everything(0)
    trainer = AlignmentTrainer(accelerator="cpu", devices=2, strategy=ModelParallelStrategy(2, 1), max_steps=1,
                               callbacks=[Measure()], logger=False, enable_checkpointing=False,
                               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                               num_sanity_val_steps=0, default_root_dir=str(work))
    trainer.fit(module, data)


def measure(work: Path, whole: bool, hidden: int, layers: int, timeout: float = 300) -> list[dict]:
    """Prepare ``work`` (once) and run the two processes; each rank's figures."""
    if not (work / "model" / "model.safetensors").exists():
        prepare(work, hidden, layers)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK"):
        env.pop(name, None)
    for old in work.glob("rank*.json"):
        old.unlink()
    command = [sys.executable, str(Path(__file__).resolve()), "--rank-run", "--workdir", str(work)]
    done = subprocess.run(command + (["--whole"] if whole else []), env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return [json.loads(path.read_text()) for path in sorted(work.glob("rank*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--whole", action="store_true", help="from_pretrained in every process + deep copy")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--rank-run", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.rank_run:
        rank_run(arguments.workdir, arguments.whole)
        return
    with tempfile.TemporaryDirectory() as scratch:
        for rank in measure(arguments.workdir or Path(scratch), arguments.whole, arguments.hidden, arguments.layers):
            mib = {key: rank[key] / 2**20 for key in ("baseline", "peak", "held", "fp32_size")}
            print(f"rank {rank['rank']}: fp32 model {mib['fp32_size']:.0f} MiB, baseline {mib['baseline']:.0f} MiB, "
                  f"peak {mib['peak']:.0f} MiB (+{mib['peak'] - mib['baseline']:.0f}), shards held "
                  f"{mib['held']:.0f} MiB, loading overhead {rank['overhead']:.2f} × the fp32 model")


if __name__ == "__main__":
    main()
