"""One alignment run of the sweep (objective × β on the controlled task), and the HH-RLHF check."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lit_align.data import PreferenceDataModule
from lit_align.eval import SamplingEvaluation, pair_statistics
from lit_align.models.policy import PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import DPO
from lit_align.tasks import (
    ControlledTask,
    SentimentOracle,
)
from lit_align.tasks.pipeline import TaskArtifacts
from lit_align.tasks.stages import read_marker
from lit_align.trainer import AlignmentTrainer
from tools.frontier.claims import (
    calibration,
)
from tools.frontier.settings import LABELS, HHSpec, RunSpec, make_objective
from tools.frontier.stages import build_hh_stage


def _trainer(run_dir: Path, max_epochs: int, callbacks: list) -> AlignmentTrainer:
    return AlignmentTrainer(
        max_epochs=max_epochs,
        accelerator="auto",
        devices=1,
        logger=TensorBoardLogger(run_dir, name="tensorboard", version=""),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def run_controlled(spec: RunSpec, run_dir: Path) -> dict:
    """One objective × β on the controlled task; returns what ``results.json`` holds."""
    L.seed_everything(spec.run.seed, verbose=False)
    source = ControlledTask(spec.task_dir, spec.task, progress=False)
    data = PreferenceDataModule(source=source, max_length=128, max_prompt_length=32, batch_size=spec.run.batch_size,
                                seed=spec.run.seed)  # the seed sets the training order (the held-out pairs are fixed)
    module = AlignmentModule(
        make_objective(spec.name, spec.beta, spec.sae_dir),
        PolicySpec(path=str(TaskArtifacts(Path(spec.task_dir)).sft_dir)),
        optimizer=partial(torch.optim.AdamW, lr=spec.run.lr),
    )
    callback = SamplingEvaluation(
        every_n_steps=spec.run.eval_every_n_steps,
        reward_fn=SentimentOracle(),
        num_prompts=spec.run.num_prompts,
        samples_per_prompt=spec.run.samples_per_prompt,
        max_new_tokens=spec.task.max_new_tokens,
        seed=spec.run.seed + 1234,
        pairs=False,  # the held-out pairs are evaluated once, at the end, below
    )
    start = time.perf_counter()
    _trainer(run_dir, spec.run.max_epochs, [callback]).fit(module, data)
    stats = pair_statistics(module, data.val_dataloader())
    authors = pair_statistics(module, data.val_dataloader(), exclude_eos=True)  # their reading of the likelihood
    return {
        "name": spec.name,
        "label": LABELS[spec.name],
        "beta": spec.beta,
        "history": callback.history,
        "margins": stats.margins.tolist(),
        "chosen_seq_kl": stats.chosen_seq_kl.tolist() if stats.chosen_seq_kl is not None else None,
        "rejected_seq_kl": stats.rejected_seq_kl.tolist() if stats.rejected_seq_kl is not None else None,
        "seconds": time.perf_counter() - start,
        "seed": spec.run.seed,
        "chosen_mean_logps": stats.chosen_mean_logps.tolist(),
        "rejected_mean_logps": stats.rejected_mean_logps.tolist(),
        "chosen_mean_logps_no_eos": authors.chosen_mean_logps.tolist(),
        "rejected_mean_logps_no_eos": authors.rejected_mean_logps.tolist(),
    }


def run_hh(spec: HHSpec, run_dir: Path) -> dict:
    """Build (or reuse) the HH stage, then the short DPO run from its SFT warm-up; held-out reward accuracy and
    ECE."""
    hh = spec.settings
    stage = build_hh_stage(Path(spec.root), hh)
    L.seed_everything(hh.seed, verbose=False)
    data = PreferenceDataModule(
        path=str(stage / "train.jsonl"),
        tokenizer=str(stage / "sft"),
        row_format="hh",
        val_path=str(stage / "val.jsonl"),
        max_length=hh.max_length,
        max_prompt_length=hh.max_prompt_length,
        batch_size=hh.batch_size,
        seed=hh.seed,
    )
    module = AlignmentModule(
        DPO(beta=hh.beta), PolicySpec(path=str(stage / "sft")), optimizer=partial(torch.optim.AdamW, lr=hh.lr)
    )
    start = time.perf_counter()
    trainer = _trainer(run_dir, hh.max_epochs, [])
    trainer.fit(module, data)
    stats = pair_statistics(module, data.val_dataloader())
    ece, se = calibration(stats.margins.tolist())
    marker = read_marker(stage) or {}
    return {
        "train_pairs": len(data.train_set),
        "val_pairs": len(stats.margins),
        "accuracy": stats.accuracy,
        "ece": ece,
        "ece_se": se,
        "mean_margin": float(stats.margins.mean()),
        "steps": trainer.global_step,
        "sft_final_loss": marker.get("sft_final_loss"),
        "sft_seconds": marker.get("seconds"),
        "seconds": time.perf_counter() - start,
    }
