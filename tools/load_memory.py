"""Host memory of building the policy and its frozen-copy reference, per process: 2 processes (gloo, CPU,
127.0.0.1), a Llama built from its config (about 200M parameters by default, random init, ``save_pretrained``
once), ``AlignmentModule(DPO)`` under FSDP2 (Lightning's ``ModelParallelStrategy``), FSDP1 (``FSDPStrategy``, on CPU
through the tests' ``CPUFSDPStrategy``) or DDP, up to the first training step::

    python tools/load_memory.py --strategy fsdp2          # lit-align's loading (lit_align/models/loading.py)
    python tools/load_memory.py --strategy fsdp2 --whole  # the old way: from_pretrained in every process + deep copy

Per rank it prints the resident set before ``fit`` (the baseline), the peak (``VmHWM``, reset at the baseline) once
the models are built (the end of ``configure_model``: under DDP the models are then whole, and DDP's wrapper
broadcasts them after) and when training starts, the bytes of the policy and the reference the process holds (its
shards; under DDP both whole), and the overhead of each peak: peak − baseline − held, as a fraction of the fp32
model size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_bytes() -> int:
    """The resident set now, and from now on the high-water mark's start (``peak_bytes``): imports that held more
    and released it (or shared-library pages the kernel evicted since) do not count against what comes after."""
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")  # reset VmHWM to the current resident set
    return status_bytes("VmRSS")


def peak_bytes() -> int:
    """The resident set's high-water mark since :func:`rss_bytes` last reset it."""
    return status_bytes("VmHWM")


def prepare(work: Path, hidden: int, layers: int, vocab: int) -> None:
    """The model, a word-level tokenizer over its vocabulary and a few rows, in ``work``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 11 // 4,
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


def strategy(name: str):
    """The Lightning strategy ``name`` for 2 processes on CPU."""
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from tests.distributed_run import CPUFSDPStrategy

    return {"fsdp2": lambda: ModelParallelStrategy(2, 1), "ddp": lambda: DDPStrategy(),
            "fsdp": lambda: CPUFSDPStrategy(auto_wrap_policy={LlamaDecoderLayer})}[name]()


def rank_run(work: Path, whole: bool, name: str) -> None:
    """One process of the 2-process run (Lightning starts the other): its figures to ``rank<r>.json``."""
    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor

    import lit_align.models.loading
    from lit_align.data import PreferenceDataModule
    from lit_align.models.policy import PolicySpec
    from lit_align.module import AlignmentModule
    from lit_align.objectives import DPO
    from lit_align.trainer import AlignmentTrainer

    if whole:
        lit_align.models.loading.empty_base = lambda spec: None
    baseline = rss_bytes()
    configured = {}

    class Measured(AlignmentModule):
        def configure_model(self) -> None:
            super().configure_model()  # under DDP the models are whole now; DDP's wrapper then broadcasts them
            configured["peak"] = peak_bytes()

    class Measure(Callback):
        def on_train_start(self, trainer, pl_module):
            models = [trainer.strategy.model, pl_module.reference.model]  # FSDP1: the wrapper holds the flat shards
            held = sum((p.to_local() if isinstance(p, DTensor) else p).nbytes for m in models for p in m.parameters())
            with safe_open(work / "model" / "model.safetensors", framework="pt") as weights:
                size = sum(math.prod(weights.get_slice(name).get_shape()) * 4 for name in weights.keys())
            peak = peak_bytes()
            figures = {"rank": trainer.global_rank, "baseline": baseline, "configured": configured["peak"],
                       "peak": peak, "held": held, "fp32_size": size, "overhead": (peak - baseline - held) / size,
                       "configured_overhead": (configured["peak"] - baseline - held) / size}
            (work / f"rank{trainer.global_rank}.json").write_text(json.dumps(figures))
            trainer.should_stop = True

    module = Measured(DPO(), PolicySpec(path=str(work / "model")))
    if whole:  # a deep copy of the loaded policy, as before
        module.reference.policy_spec = None
    data = PreferenceDataModule(str(work / "pairs.jsonl"), batch_size=1, val_fraction=0.0, max_length=16,
                                max_prompt_length=8, tokenizer=str(work / "model"))
    L.seed_everything(0)
    trainer = AlignmentTrainer(accelerator="cpu", devices=2, strategy=strategy(name), max_steps=1,
                               callbacks=[Measure()], logger=False, enable_checkpointing=False,
                               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                               num_sanity_val_steps=0, default_root_dir=str(work))
    trainer.fit(module, data)


def measure(work: Path, whole: bool, hidden: int, layers: int, vocab: int, strategy: str = "fsdp2",
            timeout: float = 300) -> list[dict]:
    """Prepare ``work`` (once) and run the two processes; each rank's figures."""
    if not (work / "model" / "model.safetensors").exists():
        prepare(work, hidden, layers, vocab)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for name in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK"):
        env.pop(name, None)
    for old in work.glob("rank*.json"):
        old.unlink()
    command = [sys.executable, str(Path(__file__).resolve()), "--rank-run", "--workdir", str(work),
               "--strategy", strategy]
    done = subprocess.run(command + (["--whole"] if whole else []), env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return [json.loads(path.read_text()) for path in sorted(work.glob("rank*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", choices=["fsdp2", "fsdp", "ddp"], default="fsdp2")
    parser.add_argument("--whole", action="store_true", help="from_pretrained in every process + deep copy")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=14)
    parser.add_argument("--vocab", type=int, default=16384, help="embeddings and head are 17%% of the default model, "
                        "as in an 8B one (13%%): FSDP1 reads them in one unit")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--rank-run", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.rank_run:
        rank_run(arguments.workdir, arguments.whole, arguments.strategy)
        return
    with tempfile.TemporaryDirectory() as scratch:
        work = arguments.workdir or Path(scratch)
        for rank in measure(work, arguments.whole, arguments.hidden, arguments.layers, arguments.vocab,
                            arguments.strategy):
            mib = {key: rank[key] / 2**20 for key in ("baseline", "configured", "peak", "held", "fp32_size")}
            print(f"rank {rank['rank']}: fp32 model {mib['fp32_size']:.0f} MiB, baseline {mib['baseline']:.0f} MiB, "
                  f"held {mib['held']:.0f} MiB; peak once built +{mib['configured'] - mib['baseline']:.0f} MiB "
                  f"(overhead {rank['configured_overhead']:.2f} × the fp32 model), at the first step "
                  f"+{mib['peak'] - mib['baseline']:.0f} MiB (overhead {rank['overhead']:.2f} ×)")

if __name__ == "__main__":
    main()
