"""Train a sparse autoencoder on a policy's residual stream at one decoder layer, and save it in SAELens' layout.

Steps: read texts from a ``.jsonl[.gz]`` (``text``, else ``prompt`` + ``chosen``, else ``chosen``); run the
policy up to ``--layer`` and keep the residual activation of every content token (padding and special tokens
dropped); hold out ``--val-fraction`` of the tokens; initialise ``b_dec`` to the training mean; train
:class:`lit_align.sae.SAETrainer` with a Lightning ``Trainer``; report reconstruction MSE, explained variance,
mean L0 and the dead-feature fraction on the held-out tokens; write ``cfg.json`` + ``sae_weights.safetensors``
(load with :func:`lit_align.sae.load_sae`), ``metrics.json`` and CSV logs to ``--output``. Run::

    python tools/train_sae.py --model path/to/policy --data data/hh-rlhf-harmless-base-test.jsonl.gz \\
        --layer 6 --output runs/sae-layer6 --d-sae 4096 --k 32
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from rich.console import Console
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_align.sae import SAETrainer, collect_activations, read_texts, save_saelens

log = logging.getLogger("train_sae")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="policy: a local transformers causal-LM folder")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: --model)")
    parser.add_argument("--data", required=True, help=".jsonl or .jsonl.gz with text / prompt+chosen / chosen")
    parser.add_argument("--layer", type=int, required=True, help="decoder layer whose output the SAE reads")
    parser.add_argument("--output", required=True, help="folder for the SAE (SAELens layout) and metrics.json")
    parser.add_argument("--d-sae", type=int, help="number of features (default: 8 x hidden size)")
    parser.add_argument("--activation", choices=("topk", "relu"), default="topk")
    parser.add_argument("--k", type=int, default=32, help="active features per token (topk)")
    parser.add_argument("--l1-coefficient", type=float, default=5.0, help="sparsity penalty λ (relu only)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-texts", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=256, help="tokens per text")
    parser.add_argument("--max-tokens", type=int, default=200_000, help="activation rows to collect")
    parser.add_argument("--collect-batch-size", type=int, default=8, help="texts per policy forward")
    parser.add_argument("--batch-size", type=int, default=1024, help="activation rows per SAE step")
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: no limit)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="policy dtype")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator for SAE training")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if not args.data.removesuffix(".gz").endswith(".jsonl"):
        parser.error(f"--data={args.data}: expected a .jsonl or .jsonl.gz file (one JSON object per line)")
    for flag, value in (("--model", args.model), ("--tokenizer", args.tokenizer), ("--data", args.data)):
        if value is not None and not Path(value).exists():
            parser.error(f"{flag}={value}: no such file or directory (looked for {Path(value).absolute()})")
    return args


def collect(args: argparse.Namespace) -> torch.Tensor:
    """Residual activations of the policy at ``--layer`` over the texts, ``(tokens, hidden)`` on the CPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype]).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = read_texts(args.data, limit=args.max_texts)
    activations = collect_activations(
        model, tokenizer, texts, args.layer, args.collect_batch_size, args.max_length, args.max_tokens
    )
    log.info("collected %d activations of width %d from %d texts", *activations.shape, len(texts))
    return activations


def split(activations: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle the rows and hold out ``val_fraction`` of them (at least one row each side)."""
    order = torch.randperm(len(activations), generator=torch.Generator().manual_seed(seed))
    n_val = min(max(1, round(val_fraction * len(activations))), len(activations) - 1)
    return activations[order[n_val:]], activations[order[:n_val]]


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the tool; returns the held-out metrics."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    train, val = split(collect(args), args.val_fraction, args.seed)
    d_model = train.shape[1]
    module = SAETrainer(
        d_model,
        args.d_sae or 8 * d_model,
        activation=args.activation,
        k=args.k if args.activation == "topk" else None,
        l1_coefficient=args.l1_coefficient if args.activation == "relu" else 0.0,
        lr=args.lr,
        layer=args.layer,
    )
    with torch.no_grad():
        module.sae.b_dec.copy_(train.float().mean(dim=0))
    output = Path(args.output)
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_epochs=args.max_epochs,
        max_steps=args.max_steps,
        default_root_dir=output,
        logger=CSVLogger(output, name="logs"),
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    val_loader = DataLoader(val, batch_size=args.batch_size)
    trainer.fit(module, train_loader, val_loader)
    metrics = {name: float(value) for name, value in trainer.validate(module, val_loader, verbose=False)[0].items()}
    save_saelens(module.sae.cpu(), output, model_name=str(args.model))
    summary = {"train_tokens": len(train), "val_tokens": len(val), "d_model": d_model, **metrics}
    (output / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    Console().print(
        f"SAE layer {args.layer}, d_sae {module.sae.d_sae} ({args.activation}), {len(train)} train / {len(val)} "
        f"held-out tokens: mse {metrics['val/mse']:.4g}, explained variance {metrics['val/explained_variance']:.4f}, "
        f"L0 {metrics['val/l0']:.1f}, dead {metrics['val/dead_fraction']:.1%}; saved to {output}"
    )
    return metrics


if __name__ == "__main__":
    main()
