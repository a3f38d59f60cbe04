"""Train a sparse autoencoder on a policy's residual stream at one decoder layer, and save it in SAELens' layout.

Steps: read the pairs ``lit-align fit`` reads, rendered and tokenised by the same data module (any source,
layout, column map, mixture, chat template; :mod:`lit_align.sae.corpus`); run the policy up to ``--layer`` and
keep the residual activation of every content token of each prompt + chosen response (``--text responses``: of
the response only; special tokens never); hold out ``--val-fraction`` of the tokens; initialise ``b_dec`` to the
training mean; train :class:`lit_align.sae.SAETrainer` with a Lightning ``Trainer``; report reconstruction MSE,
explained variance, mean L0 and the dead-feature fraction on the held-out tokens; write ``cfg.json`` +
``sae_weights.safetensors`` (load with :func:`lit_align.sae.load_sae`), ``metrics.json`` and CSV logs to
``--output``. The data is given as ``fit`` takes it: a fit config's ``data:`` section, ``--data.*`` settings, or
both (the settings win)::

    python tools/train_sae.py --model path/to/policy --layer 6 --output runs/sae-layer6 --config configs/my_fit.yaml
    python tools/train_sae.py --model path/to/policy --layer 6 --output runs/sae-layer6 --d-sae 4096 --k 32 \\
        --data.path HuggingFaceH4/ultrafeedback_binarized --data.split train_prefs --text responses

``--data pairs.jsonl`` is short for ``--data.path pairs.jsonl``; a ``.jsonl`` whose rows hold a ``text`` field (and
no ``chosen``) is read as a plain text corpus instead: ``text`` per row, cut at ``--max-length`` (default 256).
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

from lit_align.data import PreferenceDataModule
from lit_align.errors import run_entry
from lit_align.sae import SAETrainer, collect_activations, read_texts, save_saelens
from lit_align.sae.activations import collect_token_activations, first_row
from lit_align.sae.corpus import data_section, pair_sequences, preference_data

log = logging.getLogger("train_sae")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TEXT_CORPUS_LENGTH = 256


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The tool's options; settings of ``fit``'s data module (``--data.<name> VALUE``) are kept, in order, in
    ``data_settings`` for :func:`lit_align.sae.corpus.preference_data`."""
    epilog = ("Any setting of fit's data module is --data.<name> VALUE, e.g. --data.split 'train[:10%]' or "
              "--data.columns '{prompt: question}' (docs/data.md); these win over --config's data: section.")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=epilog, allow_abbrev=False)
    parser.add_argument("--model", required=True, help="policy: a local transformers causal-LM folder")
    parser.add_argument("--tokenizer", help="tokenizer when the data names none (default: --model)")
    parser.add_argument("--config", help="a lit-align fit config: its data: section is the data")
    parser.add_argument("--data", help="a .jsonl or .jsonl.gz of pairs (short for --data.path), or of text rows")
    parser.add_argument("--text", choices=("prompt_and_response", "responses"), default="prompt_and_response",
                        help="which tokens of each pair the SAE reads (special tokens never)")
    parser.add_argument("--layer", type=int, required=True, help="decoder layer whose output the SAE reads")
    parser.add_argument("--output", required=True, help="folder for the SAE (SAELens layout) and metrics.json")
    parser.add_argument("--d-sae", type=int, help="number of features (default: 8 x hidden size)")
    parser.add_argument("--activation", choices=("topk", "relu"), default="topk")
    parser.add_argument("--k", type=int, default=32, help="active features per token (topk)")
    parser.add_argument("--l1-coefficient", type=float, default=5.0, help="sparsity penalty λ (relu only)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-texts", type=int, default=1000, help="pairs (or text rows) read")
    parser.add_argument("--max-length", type=int,
                        help="tokens per pair (short for --data.max_length) or per text row (default 256)")
    parser.add_argument("--max-tokens", type=int, default=200_000, help="activation rows to collect")
    parser.add_argument("--collect-batch-size", type=int, default=8, help="texts per policy forward")
    parser.add_argument("--batch-size", type=int, default=1024, help="activation rows per SAE step")
    parser.add_argument("--max-epochs", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: no limit)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="policy dtype")
    parser.add_argument("--accelerator", default="auto", help="Lightning accelerator for SAE training")
    parser.add_argument("--seed", type=int, default=0)
    args, rest = parser.parse_known_args(argv)
    args.data_settings = rest
    check_args(parser, args)
    return args


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse, with the flag named, what cannot run: unknown options, missing or unreadable inputs."""
    unknown = [arg for arg in args.data_settings if arg.startswith("-") and not arg.startswith("--data.")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (fit's data settings are --data.<name>)")
    if not 0 < args.val_fraction < 1:
        parser.error(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.data is None and args.config is None and not args.data_settings:
        parser.error("give the data: --data pairs.jsonl, --config (a fit config with a data: section) "
                     "or fit's data settings (--data.path ..., --data.source ...)")
    if args.data is not None and not args.data.removesuffix(".gz").endswith(".jsonl"):
        parser.error(f"--data={args.data}: expected a .jsonl or .jsonl.gz file (one JSON object per line); other "
                     "files, dataset names and mixtures: give them as fit does, with --data.path or --config")
    paths = (("--model", args.model), ("--tokenizer", args.tokenizer), ("--data", args.data), ("--config", args.config))
    for flag, value in paths:
        if value is not None and not Path(value).exists():
            parser.error(f"{flag}={value}: no such file or directory (looked for {Path(value).absolute()})")


def is_text_corpus(args: argparse.Namespace) -> bool:
    """Whether the data is a plain text corpus: ``--data`` alone, its first row holding ``text`` (and no pair)."""
    if args.data is None or args.config is not None or args.data_settings:
        return False
    row = first_row(args.data)
    return isinstance(row, dict) and "text" in row and "chosen" not in row


def collect(args: argparse.Namespace) -> torch.Tensor:
    """Residual activations of the policy at ``--layer`` over the data, ``(tokens, hidden)`` on the CPU; the data
    is read (and refused, if it must be) before the policy loads."""
    if is_text_corpus(args):
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        texts = read_texts(args.data, limit=args.max_texts)
        activations = collect_activations(load_policy(args), tokenizer, texts, args.layer, args.collect_batch_size,
                                          args.max_length or TEXT_CORPUS_LENGTH, args.max_tokens)
        log.info("collected %d activations of width %d from %d texts", *activations.shape, len(texts))
        return activations
    data = fit_data(args)
    sequences = pair_sequences(data, args.text, limit=args.max_texts)
    activations = collect_token_activations(load_policy(args), sequences, args.layer, data.pad_token_id,
                                            args.collect_batch_size, args.max_tokens)
    log.info("collected %d activations of width %d from %d pairs (%s)", *activations.shape, len(sequences), args.text)
    return activations


def load_policy(args: argparse.Namespace) -> torch.nn.Module:
    """The policy in ``--dtype``, in eval mode, on the GPU when there is one."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return AutoModelForCausalLM.from_pretrained(args.model, dtype=DTYPES[args.dtype]).to(device).eval()


def fit_data(args: argparse.Namespace) -> PreferenceDataModule:
    """The data module ``lit-align fit`` builds from the same data settings, set up (its report logged): the
    pairs are its training pairs, then its validation pairs."""
    settings = [*(["--data.path", args.data] if args.data else []),
                *([f"--data.max_length={args.max_length}"] if args.max_length else []),
                "--data.val_fraction=0",  # every pair once: the SAE holds out activations of its own (--val-fraction)
                *args.data_settings]
    section = data_section(args.config) if args.config else None
    data = preference_data(section, settings, args.tokenizer or args.model)
    data.source.prepare()
    data.setup("fit")
    return data


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
    run_entry(main)
