"""What a sweep and each of its runs depend on: settings, presets, the objectives by name, run specs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from jsonargparse.typing import OpenUnitInterval, PositiveFloat, PositiveInt

from lit_align.objectives import DPO, FDPO, FPO, TDPO, Objective
from lit_align.tasks import (
    ControlledTaskSettings,
    SFTSettings,
    TinyLlamaSettings,
)

REPO = Path(__file__).resolve().parents[2]
RESULTS_VERSION = 5
"""Bumped whenever a run's code changes what its results hold (invalidates every cached run)."""

ObjectiveName = Literal["dpo", "forward_kl", "js", "alpha_0.3", "alpha_0.5", "alpha_0.7", "tdpo1", "tdpo2", "fpo"]
LABELS: dict[str, str] = {
    "dpo": "DPO (reverse KL)",
    "forward_kl": "f-DPO forward KL",
    "js": "f-DPO JS",
    "alpha_0.3": "f-DPO α=0.3",
    "alpha_0.5": "f-DPO α=0.5",
    "alpha_0.7": "f-DPO α=0.7",
    "tdpo1": "TDPO1",
    "tdpo2": "TDPO2 (α=0.5)",
    "fpo": "FPO",
}


def make_objective(name: str, beta: float, sae_dir: str | None) -> Objective:
    """The objective ``name`` at strength ``beta`` (FPO reads the SAE in ``sae_dir``)."""
    if name == "dpo":
        return DPO(beta=beta)
    if name in ("forward_kl", "js"):
        return FDPO(divergence=name, beta=beta)
    if name.startswith("alpha_"):
        return FDPO(divergence="alpha", beta=beta, alpha=float(name.removeprefix("alpha_")))
    if name in ("tdpo1", "tdpo2"):
        return TDPO(variant=int(name[-1]), beta=beta, alpha=0.5)
    if name == "fpo":
        return FPO(sae_path=sae_dir, layer=0, beta=beta)
    raise ValueError(f"unknown objective {name!r}; choose one of {list(LABELS)}")


@dataclass(frozen=True)
class RunSettings:
    """Training and evaluation of each alignment run on the controlled task."""

    max_epochs: PositiveInt = 2
    batch_size: PositiveInt = 32
    lr: PositiveFloat = 5e-4
    """AdamW learning rate (the quickstart's)."""
    eval_every_n_steps: PositiveInt = 61
    """Optimizer steps between evaluations (each one is a point along the run's frontier line); 61 is one epoch
    of the default task's pairs."""
    num_prompts: PositiveInt = 512
    """Held-out prompts sampled at each evaluation."""
    samples_per_prompt: PositiveInt = 2
    seed: int = 0
    """Seed of the training order and the global RNG; the evaluation samples with ``seed + 1234``."""


@dataclass(frozen=True)
class SAESettings:
    """The sparse autoencoder FPO reads, trained by ``tools/train_sae.py`` on the SFT model (as configs/fpo.yaml)."""

    layer: int = 0
    d_sae: PositiveInt = 512
    k: PositiveInt = 16
    max_texts: PositiveInt = 2000
    max_epochs: PositiveInt = 10


@dataclass(frozen=True)
class HHSettings:
    """The HH-RLHF sanity check: a small Llama, an SFT warm-up on chosen transcripts, then a short DPO run."""

    enabled: bool = True
    path: str = str(REPO / "data" / "hh-rlhf-harmless-base-test.jsonl.gz")
    max_rows: PositiveInt | None = None
    """Use only the first rows of the file (all when unset)."""
    val_fraction: OpenUnitInterval = 0.1
    vocab_size: PositiveInt = 2048
    model: TinyLlamaSettings = field(
        default_factory=lambda: TinyLlamaSettings(
            hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, tie_word_embeddings=True,
        )
    )
    sft: SFTSettings = field(
        default_factory=lambda: SFTSettings(max_steps=200, batch_size=16, learning_rate=2e-3, warmup_steps=20)
    )
    max_length: PositiveInt = 192
    max_prompt_length: PositiveInt = 128
    beta: PositiveFloat = 0.1
    lr: PositiveFloat = 2e-4
    batch_size: PositiveInt = 16
    max_epochs: PositiveInt = 1
    seed: int = 0


QUICK = {
    "workdir": ".cache/frontier_quick",
    "out_dir": "runs/frontier_quick",
    "objectives": ["dpo", "forward_kl", "tdpo2"],
    "betas": [0.1, 1.0],
    "task": ControlledTaskSettings(
        n_reviews=3000, n_train_prompts=480, n_val_prompts=200, n_heldout_prompts=64,
        sft=SFTSettings(max_steps=250, batch_size=64, learning_rate=3e-3, warmup_steps=20),
    ),
    "run": RunSettings(max_epochs=2, eval_every_n_steps=10, num_prompts=64),
    "hh": HHSettings(
        max_rows=400,
        val_fraction=0.2,
        vocab_size=512,
        model=TinyLlamaSettings(hidden_size=64, intermediate_size=128, max_position_embeddings=256),
        sft=SFTSettings(max_steps=30, batch_size=16, learning_rate=2e-3, warmup_steps=5),
        max_length=128,
        max_prompt_length=96,
    ),
}


@dataclass(frozen=True)
class RunSpec:
    """Everything one alignment run depends on (its cache key hashes all of it but the paths)."""

    name: str
    beta: float
    task: ControlledTaskSettings
    run: RunSettings
    upstream: tuple[str, ...]
    """Fingerprints of the task's SFT and pairs stages (and of the SAE for FPO)."""
    task_dir: str
    sae_dir: str | None

    @property
    def key(self) -> str:
        payload = dataclasses.asdict(self) | {"version": RESULTS_VERSION}
        payload = {k: v for k, v in payload.items() if k not in ("task_dir", "sae_dir")}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def dirname(self) -> str:
        return f"{self.name}_b{self.beta:g}_{self.key}"


@dataclass(frozen=True)
class HHSpec:
    """The HH-RLHF check: its settings, and the work directory its cached stage goes under."""

    settings: HHSettings
    root: str

    @property
    def key(self) -> str:
        payload = {"settings": dataclasses.asdict(self.settings), "version": RESULTS_VERSION}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def dirname(self) -> str:
        return f"hh_dpo_{self.key}"
