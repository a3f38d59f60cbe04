"""Step time and peak memory of DPO (online reference), FPO with the online reference and FPO from the offline
store, side by side, through :class:`lit_align.module.AlignmentModule` on a small random Llama.

One step = ``objective(preference_inputs(batch))``, backward, gradients dropped: the policy's forward and
backward, plus what each configuration needs on the reference side:

- ``dpo``: ``DPO(beta=0.1)`` with a ``FrozenCopy`` reference (a second model; its forward under ``no_grad``).
- ``fpo-online``: ``FPO`` with the same ``FrozenCopy``: its forward for log-probs, and its residual stream up to
  the SAE's layer for the reference features.
- ``fpo-store``: ``FPO`` with an ``OfflineStore`` precomputed once (not timed): no reference model at all; the
  reference's log-probs and sparse pooled features are looked up by example key.

The SAE (random TopK, ``--d-sae`` features over the residual at ``--layer``) is saved in SAELens' layout and
loaded by ``FPO`` as in training. Each configuration runs in a fresh ``spawn`` child. Columns:

- ``resident MiB``: memory held after building (policy, reference model, SAE, store), before any step.
- ``step peak MiB``: the peak growth above that during the first step.
- ``total MiB``: their sum, the configuration's peak.
- ``step s``: the fastest of ``--steps`` timed steps after the first (the least disturbed by other load).

On the CPU, memory is the process's resident set (``ru_maxrss``, high-water mark reset with
``/proc/self/clear_refs``, Linux); on CUDA it is ``torch.cuda`` allocated memory. Run::

    python -m tools.bench_fpo                      # CPU; --device cuda on a GPU
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tools.common import peak_memory_mib, reset_peak_memory

METHODS = ("dpo", "fpo-online", "fpo-store")


@dataclass
class Config:
    method: str
    device: str
    vocab: int
    hidden: int
    layers: int
    pairs: int
    seq_len: int
    prompt_len: int
    layer: int
    top_k: int
    sae_path: str
    store_path: str
    steps: int
    threads: int


def _policy_spec(cfg: Config):
    from lit_align.models.policy import PolicySpec

    heads = max(1, cfg.hidden // 64)
    return PolicySpec(
        config=dict(
            model_type="llama",
            vocab_size=cfg.vocab,
            hidden_size=cfg.hidden,
            intermediate_size=4 * cfg.hidden,
            num_hidden_layers=cfg.layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=cfg.seq_len,
        )
    )


def _batch(cfg: Config):
    import torch

    generator = torch.Generator().manual_seed(0)
    rows = 2 * cfg.pairs
    input_ids = torch.randint(3, cfg.vocab, (rows, cfg.seq_len), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    response_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    response_mask[:, cfg.prompt_len :] = True
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
        "example_key": torch.arange(cfg.pairs),
    }
    return {name: value.to(cfg.device) for name, value in batch.items()}


def _module(cfg: Config, method: str):
    from lit_align.module import AlignmentModule
    from lit_align.objectives import DPO, FPO
    from lit_align.reference import FrozenCopy, OfflineStore

    if method == "dpo":
        objective = DPO(beta=0.1)
    else:
        objective = FPO(cfg.sae_path, layer=cfg.layer, beta=0.1, alpha=0.5, top_k=cfg.top_k)
    reference = OfflineStore(cfg.store_path) if method == "fpo-store" else FrozenCopy()
    module = AlignmentModule(objective, _policy_spec(cfg), reference=reference)
    module._trainer = None
    module.configure_model()
    module.policy.to(cfg.device)
    return module


def precompute(cfg: Config) -> None:
    """In a fresh process: fill the offline store for the benchmark's batch (what ``lit-align precompute`` does)."""
    from lit_align.reference.fingerprint import run_fingerprint
    from lit_align.reference.store import write_store

    module = _module(cfg, "fpo-online")
    columns = module.predict_step(_batch(cfg), 0)
    write_store(cfg.store_path, {k: v.cpu() for k, v in columns.items()},
                run_fingerprint(module.policy, None, module.feature_extractor))


def _resident_mib(cfg: Config) -> float:
    import torch

    if cfg.device.startswith("cuda"):
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * resource.getpagesize() / 2**20


def _step(module, batch) -> None:
    module.objective(module.preference_inputs(batch)).loss.backward()
    module.policy.zero_grad(set_to_none=True)


def _synchronize(cfg: Config) -> None:
    import torch

    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()


def run_config(cfg: Config) -> tuple[float, float, float]:
    """In a fresh process: (resident MiB after building, peak growth of one step in MiB, fastest step seconds)."""
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    module = _module(cfg, cfg.method)
    batch = _batch(cfg)
    _synchronize(cfg)
    resident = _resident_mib(cfg)
    reset_peak_memory(cfg.device)
    baseline = peak_memory_mib(cfg.device)
    _step(module, batch)
    _synchronize(cfg)
    step_peak = peak_memory_mib(cfg.device) - baseline

    seconds = []
    for _ in range(cfg.steps):
        start = time.perf_counter()
        _step(module, batch)
        _synchronize(cfg)
        seconds.append(time.perf_counter() - start)
    return resident, step_peak, min(seconds)


def _write_sae(path: Path, hidden: int, d_sae: int, k: int, layer: int) -> str:
    import torch

    from lit_align.sae import SparseAutoencoder, save_saelens

    torch.manual_seed(0)
    sae = SparseAutoencoder(hidden, d_sae, activation="topk", k=k, apply_b_dec_to_input=True, layer=layer)
    return str(save_saelens(sae, path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--vocab", type=int, default=32_000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--layer", type=int, default=2, help="decoder layer the SAE reads")
    parser.add_argument("--d-sae", type=int, default=4096, help="SAE features (16 x hidden by default)")
    parser.add_argument("--sae-k", type=int, default=32, help="active features per token of the TopK SAE")
    parser.add_argument("--top-k", type=int, default=50, help="FPO's k")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration (fastest reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per configuration (0: torch's default)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as scratch:
        base = Config(
            "fpo-online", args.device, args.vocab, args.hidden, args.layers, args.pairs, args.seq_len,
            args.prompt_len, args.layer, args.top_k,
            _write_sae(Path(scratch) / "sae", args.hidden, args.d_sae, args.sae_k, args.layer),
            str(Path(scratch) / "store"), args.steps, args.threads,

        )
        if "fpo-store" in args.methods:
            with context.Pool(1) as pool:
                pool.apply(precompute, (base,))
        positions = 2 * args.pairs * (args.seq_len - args.prompt_len)
        print(
            f"Llama vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers; {args.pairs} pairs x "
            f"{args.seq_len} tokens ({positions} response positions); SAE at layer {args.layer}, d_sae "
            f"{args.d_sae} (TopK {args.sae_k}), FPO top_k {args.top_k}; {args.device}"
        )
        header = ("method", "resident MiB", "step peak MiB", "total MiB", "x DPO", "step s", "x DPO")
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("-" * (len(h) + 2) for h in header) + "|")
        reference = None
        for method in args.methods:
            cfg = Config(**{**vars(base), "method": method})
            with context.Pool(1) as pool:
                resident, step_peak, seconds = pool.apply(run_config, (cfg,))
            total = resident + step_peak
            reference = (total, seconds) if method == "dpo" else reference
            ratios = (f"{total / reference[0]:.2f}", f"{seconds / reference[1]:.2f}") if reference else ("-", "-")
            print(
                f"| {method} | {resident:.0f} | {step_peak:.0f} | {total:.0f} | {ratios[0]} | {seconds:.3f} "
                f"| {ratios[1]} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
