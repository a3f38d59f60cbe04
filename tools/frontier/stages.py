"""The cached stages of a sweep besides the task: the SAE FPO reads and the HH-RLHF split, tokenizer and SFT."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from lit_align.tasks.pipeline import TaskArtifacts
from lit_align.tasks.sft import train_sft
from lit_align.tasks.stages import read_marker, run_stage
from lit_align.tasks.tokenizer import train_bpe_tokenizer
from tools.frontier.settings import REPO, HHSettings, SAESettings


def build_sae(root: Path, artifacts: TaskArtifacts, sae: SAESettings, threads: int) -> tuple[Path, str]:
    """Train (or reuse) the SAE that FPO reads, on the residual stream of the task's SFT model."""
    sft_fingerprint = read_marker(artifacts.sft_dir)["fingerprint"]

    def build(out: Path) -> dict:
        command = [
            sys.executable, str(REPO / "tools" / "train_sae.py"),
            "--model", str(artifacts.sft_dir), "--data", str(artifacts.train_pairs_path),
            "--layer", str(sae.layer), "--d-sae", str(sae.d_sae), "--k", str(sae.k),
            "--max-texts", str(sae.max_texts), "--max-epochs", str(sae.max_epochs), "--batch-size", "512",
            "--output", str(out),
        ]
        env = os.environ | {"OMP_NUM_THREADS": str(threads)}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return json.loads((out / "metrics.json").read_text())

    settings = dataclasses.asdict(sae) | {"sft": sft_fingerprint}
    stage = run_stage(root, f"sae-layer{sae.layer}", settings, build)
    return stage.path, stage.fingerprint


def build_hh_stage(root: Path, hh: HHSettings) -> Path:
    """Split the HH file (seeded), train a BPE tokenizer on the training split, warm a small Llama up by SFT on
    its chosen transcripts (each cut to its last ``max_length`` tokens)."""

    def build(out: Path) -> dict:
        with gzip.open(hh.path, "rt", encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()][: hh.max_rows]
        random.Random(hh.seed).shuffle(rows)
        n_val = max(1, round(hh.val_fraction * len(rows)))
        splits = {"val": rows[:n_val], "train": rows[n_val:]}
        for split, split_rows in splits.items():
            (out / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in split_rows))
        texts = [row[key] for row in splits["train"] for key in ("chosen", "rejected")]
        tokenizer = train_bpe_tokenizer(texts, hh.vocab_size, hh.max_length)
        chosen = [tokenizer.decode(ids[-(hh.max_length - 1) :]) for ids in
                  tokenizer([row["chosen"] for row in splits["train"]])["input_ids"]]
        loss = train_sft(chosen, tokenizer, out / "sft", hh.model, hh.sft, hh.seed, progress=False)
        return {"train_rows": len(splits["train"]), "val_rows": n_val, "sft_final_loss": loss}

    settings = {k: v for k, v in dataclasses.asdict(hh).items() if k not in ("beta", "lr", "batch_size", "max_epochs")}
    return run_stage(root, "hh", settings, build).path


def shorter_chosen_rate(path: Path) -> float:
    """How often the chosen transcript is the shorter of the two: the accuracy of a "shorter response wins" rule,
    a shortcut a small model can learn on HH-RLHF harmless (refusals are short)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sum(len(row["chosen"]) < len(row["rejected"]) for row in rows) / max(1, len(rows))
