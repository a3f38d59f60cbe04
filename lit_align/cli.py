"""``lit-align``: LightningCLI for alignment (``fit``, ``validate``, ``test``, ``predict``, ``precompute``)."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from lit_align.data.datamodule import PreferenceDataModule
from lit_align.module import AlignmentModule
from lit_align.trainer import AlignmentTrainer


class AlignmentCLI(LightningCLI):
    """``lit-align fit --config configs/quickstart.yaml``; ``lit-align precompute --config ...`` fills the
    offline reference store named by ``model.reference``."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "precompute": {"model", "datamodule"}}


def main(args: list[str] | None = None) -> None:
    """The ``lit-align`` console script."""
    AlignmentCLI(
        AlignmentModule,
        PreferenceDataModule,
        trainer_class=AlignmentTrainer,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
