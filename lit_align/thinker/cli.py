"""``lit-align-thinker`` (or ``python -m lit_align.thinker``): LightningCLI for latent-thought training.

A separate entry point rather than a second model class in ``lit-align``: that CLI fixes ``AlignmentModule``, and
switching it to ``subclass_mode_model`` would make every shipped config name its model's ``class_path``."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from lit_align.thinker.datamodule import ReasoningDataModule
from lit_align.thinker.module import LatentThoughtModule
from lit_align.trainer import AlignmentTrainer


def main(args: list[str] | None = None) -> None:
    """``lit-align-thinker fit --config configs/lta_thinker.yaml``."""
    LightningCLI(
        LatentThoughtModule,
        ReasoningDataModule,
        trainer_class=AlignmentTrainer,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
