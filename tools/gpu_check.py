"""GPU acceptance check: one command, a ~1B-parameter Llama built from its config (no downloads), lit-align's
training arms through its real path (``AlignmentModule`` + ``PreferenceDataModule`` + ``AlignmentTrainer``, FSDP2
``ModelParallelStrategy`` on one device with ``FSDPMixedPrecision``: bf16 all-gather and compute, fp32 gradient
reduction and master weights, under bf16 autocast), and TRL's ``DPOTrainer`` at matched settings when ``trl`` is
importable::

    python tools/gpu_check.py            # one H200: about 1.1B parameters, 8 pairs × 2 × 1024 tokens per step
    python tools/gpu_check.py --tiny     # the same code on CPU with a tiny Llama, in seconds (the test suite's)
    python tools/gpu_check.py --arms dpo dpo-dense dpo-flex dpo-padded trl-dpo   # a subset

Arms (the CPU bench's, ``tools/bench.py``, on a GPU, and a few more):

- ``dpo``: frozen-copy reference; pairs in the prompt-shared packed layout (the default) on SDPA, which attends
  by pair (one SDPA call per pair with its own mask, the batch in one row: ``lit_align.models.pair_attention``);
  bf16 (FSDP2 mixed precision, fp32 master weights). ``dpo-dense``: the same with SDPA over the whole packed rows
  and their 4D mask (lit-align before attention by pair). ``dpo-flex``: the same on FlexAttention, whose
  ``BlockMask`` skips the blocks masked out entirely (other pairs, rejected on chosen; CUDA only: FlexAttention has
  no CPU backward). ``dpo-padded``: the same with ``packing=False`` (each prompt computed twice, rows padded).
  ``dpo-fp32``: ``dpo`` in fp32 throughout, the reference for the bf16 arms' loss agreement.
- ``tdpo2`` (token-level KL to the frozen copy), ``fpo-store`` (FPO with a random TopK SAE at the middle layer,
  the reference's log-probs and features precomputed once into an offline store, not timed).
- ``lora-dpo``: LoRA r=16 on every linear layer, the reference the adapter-disabled base. ``qlora-dpo``: the same
  adapter on a base read in 4-bit NF4 (double-quantised, bitsandbytes: QLoRA), the reference the adapter-disabled
  quantised base; on one device without FSDP (4-bit weights are not sharded), bf16 autocast.
- ``trl-dpo``: ``DPOTrainer`` matched to ``dpo``: the same model, rows, batches in the same order (lit-align's,
  ``train_sampling_strategy="sequential"``), batch size and length, bf16 autocast, gradient checkpointing,
  ``adamw_torch_fused`` (lit-align's :class:`lit_align.schedule.AdamW`), lr 1e-6 constant, no weight decay, no
  clipping. ``trl-fp32``: the same in fp32, matched to ``dpo-fp32``.

Every arm runs in a fresh process on the same synthetic rows (a word-level tokenizer over the model's vocabulary;
every row the same length, so every batch has the same shape). Per arm it prints tokens/s (non-padding tokens
of chosen and rejected, over the steps after ``--warmup``), peak memory (``torch.cuda.max_memory_allocated``; on
CPU the peak resident set), MFU — model FLOPs (6N per trained token, 4N with LoRA's frozen weights, 2N per
reference token, plus attention) over the accelerator's dense bf16 peak (``--peak-tflops``, H200: 989) — and the
first steps' losses; then the bf16 arms' loss agreement with the fp32 ones and lit-align's with TRL's.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("dpo", "dpo-dense", "dpo-flex", "dpo-padded", "dpo-fp32", "tdpo2", "fpo-store", "lora-dpo", "qlora-dpo",
        "trl-dpo", "trl-fp32")
FP32_ARMS = ("dpo-fp32", "trl-fp32")
RECORDED = 3
"""Steps whose loss each arm reports (the first ones; policy = reference at step 0, so its loss is ln 2)."""
AGREEMENT = (("dpo", "dpo-fp32"), ("dpo-dense", "dpo"), ("dpo-flex", "dpo"), ("dpo-padded", "dpo"),
             ("trl-dpo", "trl-fp32"), ("dpo", "trl-dpo"), ("dpo-fp32", "trl-fp32"))
"""Pairs of arms that train the same batches from the same weights, whose first losses are compared."""
ONE_B = dict(model_type="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
             num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=4096, tie_word_embeddings=False)
TINY = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)


def settings(arguments: argparse.Namespace) -> dict:
    tiny = arguments.tiny
    return {"config": TINY if tiny else ONE_B, "device": "cpu" if tiny else "cuda",
            "steps": arguments.steps or (3 if tiny else 30), "warmup": 1 if tiny else 5,
            "pairs_per_step": 2 if tiny else 8, "prompt_len": 16 if tiny else 512, "response_len": 16 if tiny else 512,
            "peak_tflops": arguments.peak_tflops, "workdir": str(arguments.workdir)}


def setup(spec: dict) -> None:
    """The model (seeded random init, ``save_pretrained``), a word-level tokenizer over its vocabulary, the rows
    and a random SAE, in ``workdir``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from lit_align.sae import SparseAutoencoder, save_saelens

    work = Path(spec["workdir"])
    config = dict(spec["config"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), pad_token_id=0,
                                                                  bos_token_id=1, eos_token_id=2, **config))
    model.save_pretrained(work / "model")
    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(4, spec["config"]["vocab_size"])]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(work / "model")
    rng = random.Random(0)

    def text(n: int) -> str:
        return " ".join(f"w{rng.randrange(4, len(words))}" for _ in range(n))

    rows = [{"prompt": text(spec["prompt_len"]), "chosen": " " + text(spec["response_len"] - 1),
             "rejected": " " + text(spec["response_len"] - 1)} for _ in range(spec["pairs_per_step"] * spec["steps"])]
    (work / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    write_order(spec, rows)
    hidden, layer = spec["config"]["hidden_size"], spec["config"]["num_hidden_layers"] // 2
    sae = SparseAutoencoder(hidden, 8 * hidden, activation="topk", k=32, apply_b_dec_to_input=True, layer=layer)
    save_saelens(sae, work / "sae")


def lit_data(spec: dict):
    """The data module of every lit-align arm (and of the order TRL is given)."""
    from lit_align.data import PreferenceDataModule

    work = Path(spec["workdir"])
    length = spec["prompt_len"] + spec["response_len"] + 2
    return PreferenceDataModule(str(work / "pairs.jsonl"), str(work / "model"), row_format="explicit",
                                max_length=length, max_prompt_length=spec["prompt_len"] + 1,
                                batch_size=spec["pairs_per_step"], val_fraction=0.0)


def write_order(spec: dict, rows: list[dict]) -> None:
    """The rows in the order lit-align's data module takes them (``order.jsonl``), for TRL's sequential sampler, so
    the TRL arms train on lit-align's batches. A row is found by its prompt's words (``w<id>``: the word-level
    tokenizer's ids, special tokens left out)."""
    data = lit_data(spec)
    data.setup("fit")
    by_prompt = {tuple(int(word[1:]) for word in row["prompt"].split()): row for row in rows}
    prompts = data.train_set["prompt_ids"]
    order = [by_prompt[tuple(i for i in prompts[index] if i >= 4)] for index in data.train_dataloader().sampler]
    (Path(spec["workdir"]) / "order.jsonl").write_text("".join(json.dumps(row) + "\n" for row in order))


def lit_parts(spec: dict, arm: str, sharded: bool = True):
    """The module and data of a lit-align arm, as a user's config would build them."""
    from functools import partial

    from lit_align.models.policy import LoraSettings, PolicySpec, Quantization
    from lit_align.models.sharding import FSDPMixedPrecision
    from lit_align.module import AlignmentModule
    from lit_align.objectives import DPO, FPO, TDPO
    from lit_align.reference import OfflineStore
    from lit_align.schedule import AdamW

    work = Path(spec["workdir"])
    objective = {"tdpo2": lambda: TDPO(variant=2, beta=0.1, alpha=0.5),
                 "fpo-store": lambda: FPO(str(work / "sae"), beta=0.1, alpha=0.5, top_k=32)}.get(arm, DPO)()
    policy = PolicySpec(path=str(work / "model"), gradient_checkpointing=True,
                        lora=LoraSettings(r=16, alpha=32) if arm in ("lora-dpo", "qlora-dpo") else None,
                        quantization=Quantization() if arm == "qlora-dpo" else None,  # 4-bit NF4, double-quantised
                        extra={"attn_implementation": "flex_attention"} if arm == "dpo-flex" else {})
    reference = OfflineStore(str(work / "store")) if arm.startswith("fpo") else None  # else the default: a frozen
    module = AlignmentModule(objective, policy, reference,  # copy, or with an adapter the adapter-disabled base
                             optimizer=partial(AdamW, lr=1e-6, weight_decay=0.0),  # fused, as TRL's matched arms
                             packing=arm != "dpo-padded",  # today's default: prompt-shared packed pairs
                             mixed_precision=FSDPMixedPrecision() if sharded and arm not in FP32_ARMS else None)
    return module, lit_data(spec)


def run_lit(spec: dict, arm: str) -> dict:
    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import ModelParallelStrategy

    import lit_align.models.layout
    from lit_align.data.collator import sequence_tokens
    from lit_align.trainer import AlignmentTrainer

    meter = Meter(spec)

    class LightningMeter(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            meter.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            meter.stop(int(sequence_tokens(batch)), loss)  # either layout: fit builds the one the module runs

    precision = "32-true" if arm in FP32_ARMS else "bf16-mixed"
    common = dict(accelerator="gpu" if spec["device"] == "cuda" else "cpu", devices=1, precision=precision,
                  logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                  num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=spec["workdir"])
    if arm == "fpo-store":  # the store, filled once (not timed) on one plain device: FSDP2 cannot stop part-way
        module, data = lit_parts(spec, arm, sharded=False)
        L.seed_everything(0)
        AlignmentTrainer(**common).precompute(module, data)
    if arm == "dpo-dense":  # lit-align before attention by pair: SDPA over each packed row's whole length
        lit_align.models.layout.attend_by_pair = lambda model: False
    sharded = arm != "qlora-dpo"  # FSDP2 does not shard bitsandbytes' 4-bit weights: QLoRA runs on one device
    module, data = lit_parts(spec, arm, sharded=sharded)
    L.seed_everything(0)
    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1) if sharded else "auto"
    trainer = AlignmentTrainer(**common, strategy=strategy, max_steps=spec["steps"], callbacks=[LightningMeter()])
    trainer.fit(module, data)
    return meter.result(lora=arm in ("lora-dpo", "qlora-dpo"), reference=arm != "fpo-store")


def run_trl(spec: dict, arm: str) -> dict:
    from datasets import load_dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    meter, work = Meter(spec), Path(spec["workdir"])

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            meter.start()

        def on_step_end(self, args, state, control, **kwargs):
            meter.stop(trainer.recorded_tokens, trainer.recorded_loss)

    class CountingDPOTrainer(DPOTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            self.recorded_tokens = int(inputs["attention_mask"].sum())
            self.recorded_loss = super().training_step(model, inputs, num_items_in_batch)
            return self.recorded_loss

    # matched to lit-align's arms: fused AdamW at a constant lr 1e-6, no weight decay, no clipping, checkpointing
    config = DPOConfig(output_dir=str(work / "trl"), max_steps=spec["steps"], beta=0.1, learning_rate=1e-6,
                       lr_scheduler_type="constant", optim="adamw_torch_fused", max_grad_norm=0.0,
                       per_device_train_batch_size=spec["pairs_per_step"], weight_decay=0.0,
                       max_length=spec["prompt_len"] + spec["response_len"] + 2, bf16=arm not in FP32_ARMS,
                       gradient_checkpointing=True, train_sampling_strategy="sequential", save_strategy="no",
                       report_to="none", use_cpu=spec["device"] == "cpu", dataloader_num_workers=0, seed=0)
    dataset = load_dataset("json", data_files=str(work / "order.jsonl"), split="train")
    trainer = CountingDPOTrainer(model=str(work / "model"), args=config, train_dataset=dataset,
                                 processing_class=AutoTokenizer.from_pretrained(work / "model"), callbacks=[Timer()])
    trainer.train()
    return meter.result(lora=False, reference=True)


class Meter:
    """Step times (after ``warmup`` steps) and non-padding tokens; then tokens/s, peak memory and MFU."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.steps, self.seconds, self.tokens, self.began = 0, 0.0, 0, 0.0
        self.losses: list[float] = []

    def _sync(self) -> None:
        if self.spec["device"] == "cuda":
            import torch

            torch.cuda.synchronize()

    def start(self) -> None:
        self._sync()
        self.began = time.perf_counter()

    def stop(self, tokens: int, loss=None) -> None:
        self._sync()
        if self.steps >= self.spec["warmup"]:
            self.seconds += time.perf_counter() - self.began
            self.tokens += tokens
        if len(self.losses) < RECORDED and loss is not None:  # read after the step's timing ends
            self.losses.append(float(loss.detach().float()))
        self.steps += 1

    def result(self, lora: bool, reference: bool) -> dict:
        import torch

        rate = self.tokens / self.seconds if self.seconds else 0.0
        if self.spec["device"] == "cuda":
            peak, where = torch.cuda.max_memory_allocated() / 2**30, "GPU"
        else:
            peak, where = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host RSS"
        flops = flops_per_token(self.spec, lora, reference)
        mfu = rate * flops / (self.spec["peak_tflops"] * 1e12) if self.spec["device"] == "cuda" else None
        return {"steps": self.steps, "tokens_per_s": rate, "peak_gib": peak, "peak_of": where, "mfu": mfu,
                "losses": self.losses}


def flops_per_token(spec: dict, lora: bool, reference: bool) -> float:
    """Model FLOPs per token (PaLM's count): a forward is 2N + 4·layers·hidden·T; training is 3 forwards (2 with
    LoRA: no weight gradients of the frozen base); an online reference adds one forward. N excludes the input
    embedding; activation recomputation is not counted."""
    c = spec["config"]
    hidden, layers, t = c["hidden_size"], c["num_hidden_layers"], spec["prompt_len"] + spec["response_len"]
    kv = hidden // c["num_attention_heads"] * c["num_key_value_heads"]
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * c["intermediate_size"]
    n = layers * per_layer + hidden * c["vocab_size"]
    forward = 2 * n + 4 * layers * hidden * t
    return (2 if lora else 3) * forward + (forward if reference else 0)


def child(spec: dict, arm: str) -> None:
    """One arm in this fresh process; its figures on stdout as ``RESULT <json>``."""
    if arm == "setup":
        setup(spec)
        result = {}
    else:
        result = (run_trl if arm == "trl-dpo" else run_lit)(spec, arm)
    print("RESULT " + json.dumps(result), flush=True)


def launch(spec: dict, arm: str, timeout: float) -> dict | str:
    """Run ``arm`` in a fresh process: its result, or why it failed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", arm, "--spec", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return f"failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny Llama on CPU: the same code, in seconds")
    parser.add_argument("--steps", type=int, help="optimizer steps per arm (default 30; --tiny 3)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H200 SXM: 989)")
    parser.add_argument("--workdir", type=Path, help="where the model, rows, SAE and store go (default: temporary)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per arm")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        child(json.loads(arguments.spec), arguments.child)
        return
    import tempfile

    import torch

    if not arguments.tiny and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; --tiny runs the same code on CPU")
    with tempfile.TemporaryDirectory() as scratch:
        arguments.workdir = arguments.workdir or Path(scratch)
        spec = settings(arguments)
        began = time.perf_counter()
        failures = report(spec, arguments.arms, arguments.timeout)
        print(f"total {time.perf_counter() - began:.0f} s", flush=True)
    sys.exit(1 if failures else 0)


def report(spec: dict, arms: list[str], timeout: float) -> int:
    """Set up, run each arm, print one row per arm, then the loss agreement; the number of arms that failed."""
    failures = 0
    setup_result = launch(spec, "setup", 2 * timeout)
    if isinstance(setup_result, str):
        print(f"setup {setup_result}")
        return 1
    c = spec["config"]
    print(f"Llama {c['num_hidden_layers']} layers, hidden {c['hidden_size']}, vocab {c['vocab_size']}; "
          f"{spec['pairs_per_step']} pairs × 2 × {spec['prompt_len'] + spec['response_len']} tokens per step, "
          f"{spec['steps']} steps (first {spec['warmup']} untimed), device {spec['device']}")
    print(f"{'arm':<10} {'tokens/s':>10} {'peak GiB':>9} {'of':>8} {'MFU':>6}  losses of the first {RECORDED} steps")
    results = {}
    for arm in arms:
        reason = skipped(arm, spec)
        if reason:
            print(f"{arm:<10} skipped: {reason}")
            continue
        result = launch(spec, arm, timeout)
        if isinstance(result, str):
            failures += 1
            print(f"{arm:<10} {result}")
            continue
        results[arm] = result
        mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a"
        losses = " ".join(f"{loss:.6f}" for loss in result["losses"])
        print(f"{arm:<10} {result['tokens_per_s']:>10.0f} {result['peak_gib']:>9.2f} {result['peak_of']:>8} "
              f"{mfu:>6}  {losses}", flush=True)
    for arm, other in AGREEMENT:
        if arm in results and other in results:
            gaps = [abs(a - b) for a, b in zip(results[arm]["losses"], results[other]["losses"], strict=False)]
            print(f"loss agreement {arm} vs {other} (same weights, same batches): largest difference "
                  f"{max(gaps, default=float('nan')):.1e} over the first {len(gaps)} steps")
    return failures


def skipped(arm: str, spec: dict) -> str | None:
    """Why ``arm`` cannot run here, or ``None``."""
    if arm.startswith("trl") and importlib.util.find_spec("trl") is None:
        return "trl is not installed"
    if arm == "qlora-dpo" and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install 'lit-align[qlora]')"
    if arm == "dpo-flex" and spec["device"] != "cuda":
        return "FlexAttention runs on CUDA only (no CPU backward in torch)"
    return None


if __name__ == "__main__":
    main()
