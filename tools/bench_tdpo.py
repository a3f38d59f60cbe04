"""Peak memory and time of one training step: DPO, naive TDPO and chunked TDPO, side by side.

One step = policy forward + backward, reference forward under ``no_grad``, on a small random Llama:

- ``dpo``: response log-probs of both models with :func:`lit_align.models.logprobs.sequence_logps`.
- ``tdpo-naive``: full ``(batch, time, vocab)`` logits of both models and full (log-)softmaxes, as the
  authors' code (``_tdpo_get_batch_logps``) does.
- ``tdpo-chunked``: :func:`lit_align.models.token_kl.sequence_logps_and_kl`.

Each configuration runs in a fresh ``spawn`` child process. Memory is the growth of the resident set during
the step: the peak (``ru_maxrss``) after the step minus the resident set after building models and inputs,
with the kernel's high-water mark reset just before the step (``/proc/self/clear_refs``, Linux). Time is the
faster of two steps. Run::

    python -m tools.bench_tdpo                # vocab 32k and 128k, hidden 256, 2 layers, 2 pairs, length 256
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import time
from dataclasses import dataclass

from tools.common import peak_memory_mib, reset_peak_memory

METHODS = ("dpo", "tdpo-naive", "tdpo-chunked")


@dataclass
class Config:
    method: str
    vocab: int
    hidden: int
    layers: int
    pairs: int
    seq_len: int
    prompt_len: int
    dpo_chunk_size: int
    tdpo_chunk_size: int


def _build(cfg: Config):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model_cfg = LlamaConfig(
        vocab_size=cfg.vocab,
        hidden_size=cfg.hidden,
        intermediate_size=4 * cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    policy = LlamaForCausalLM(model_cfg)
    reference = copy.deepcopy(policy).requires_grad_(False)
    input_ids = torch.randint(cfg.vocab, (2 * cfg.pairs, cfg.seq_len))
    response_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    response_mask[:, cfg.prompt_len :] = True
    return policy, reference, input_ids, torch.ones_like(input_ids), response_mask


def _step(cfg: Config, policy, reference, input_ids, attention_mask, response_mask) -> None:
    import torch

    from lit_align.models.logprobs import sequence_logps
    from lit_align.models.token_kl import sequence_logps_and_kl
    from lit_align.objectives.functional import fdpo_loss, tdpo_loss

    pairs = cfg.pairs
    if cfg.method == "tdpo-naive":
        logits = policy(input_ids, attention_mask=attention_mask).logits.float()[:, :-1]
        with torch.no_grad():
            ref_logits = reference(input_ids, attention_mask=attention_mask).logits.float()[:, :-1]
        logp, ref_p = torch.log_softmax(logits, -1), torch.softmax(ref_logits, -1)
        ref_logp = ref_p.log()
        targets, mask = input_ids[:, 1:].unsqueeze(-1), response_mask[:, 1:]
        policy_logps = (logp.gather(-1, targets).squeeze(-1) * mask).sum(-1)
        ref_logps = (ref_logp.gather(-1, targets).squeeze(-1) * mask).sum(-1)
        seq_kl = ((ref_p * (ref_logp - logp)).sum(-1) * mask).sum(-1)
    else:
        hidden = policy.get_decoder()(input_ids, attention_mask=attention_mask).last_hidden_state
        with torch.no_grad():
            ref_hidden = reference.get_decoder()(input_ids, attention_mask=attention_mask).last_hidden_state
        head, ref_head = policy.get_output_embeddings(), reference.get_output_embeddings()
        if cfg.method == "dpo":
            policy_logps = sequence_logps(hidden, head, input_ids, response_mask, cfg.dpo_chunk_size)
            with torch.no_grad():
                ref_logps = sequence_logps(ref_hidden, ref_head, input_ids, response_mask, cfg.dpo_chunk_size)
        else:
            policy_logps, ref_logps, seq_kl = sequence_logps_and_kl(
                hidden, head, ref_hidden, ref_head, input_ids, response_mask, cfg.tdpo_chunk_size
            )
    logps = (policy_logps[:pairs], policy_logps[pairs:], ref_logps[:pairs], ref_logps[pairs:])
    if cfg.method == "dpo":
        losses = fdpo_loss(*logps, divergence="reverse_kl", beta=0.1)[0]
    else:
        losses = tdpo_loss(*logps, seq_kl[:pairs], seq_kl[pairs:], beta=0.1, alpha=0.5, variant=2)[0]
    losses.mean().backward()
    policy.zero_grad(set_to_none=True)


def run_config(cfg: Config) -> tuple[float, float]:
    """In a fresh process: build, then return (peak memory growth of the first step in MiB, seconds)."""
    models_and_inputs = _build(cfg)
    reset_peak_memory()
    baseline = peak_memory_mib()
    start = time.perf_counter()
    _step(cfg, *models_and_inputs)
    first = time.perf_counter() - start
    peak = peak_memory_mib() - baseline
    start = time.perf_counter()
    _step(cfg, *models_and_inputs)
    return peak, min(first, time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab", type=int, nargs="+", default=[32_000, 128_000])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--dpo-chunk-size", type=int, default=4096, help="sequence_logps' default")
    parser.add_argument("--tdpo-chunk-size", type=int, default=1024, help="sequence_logps_and_kl's default")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    positions = 2 * args.pairs * (args.seq_len - args.prompt_len)
    print(
        f"Llama hidden {args.hidden}, {args.layers} layers, {args.pairs} pairs x {args.seq_len} tokens "
        f"({positions} response positions); chunk sizes: dpo {args.dpo_chunk_size}, "
        f"tdpo-chunked {args.tdpo_chunk_size}"
    )
    print(f"| {'vocab':>7} | {'method':<12} | {'peak MiB':>9} | {'x DPO':>6} | {'step s':>7} |")
    print(f"|{'-' * 9}|{'-' * 14}|{'-' * 11}|{'-' * 8}|{'-' * 9}|")
    for vocab in args.vocab:
        dpo_peak = None
        for method in args.methods:
            cfg = Config(
                method,
                vocab,
                args.hidden,
                args.layers,
                args.pairs,
                args.seq_len,
                args.prompt_len,
                args.dpo_chunk_size,
                args.tdpo_chunk_size,
            )
            with context.Pool(1) as pool:
                peak, seconds = pool.apply(run_config, (cfg,))
            dpo_peak = peak if method == "dpo" else dpo_peak
            ratio = f"{peak / dpo_peak:6.2f}" if dpo_peak else f"{'-':>6}"
            print(f"| {vocab:>7} | {method:<12} | {peak:>9.0f} | {ratio} | {seconds:>7.2f} |", flush=True)


if __name__ == "__main__":
    main()
