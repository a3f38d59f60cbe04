"""``lit-align-thinker`` (or ``python -m lit_align.thinker``, or ``lit-align`` given a config whose
``model.class_path`` is ``LatentThoughtModule``): LightningCLI for latent-thought training.

The same :class:`~lit_align.cli.AlignmentCLI` (one-line errors, ``--ckpt_path=last``) with another model class:
``lit-align``'s own parser fixes ``AlignmentModule`` (its configs name no model ``class_path``), this one takes
``LatentThoughtModule`` in ``subclass_mode_model``, which is how ``lit-align`` tells the two configs apart."""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from lit_align.cli import DEBUG_EPILOG, AlignmentCLI
from lit_align.errors import run_entry
from lit_align.thinker.datamodule import ReasoningDataModule
from lit_align.thinker.module import LatentThoughtModule
from lit_align.trainer import AlignmentTrainer


class ThinkerCLI(AlignmentCLI):
    """:class:`~lit_align.cli.AlignmentCLI` without ``precompute`` (no reference model to store)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return LightningCLI.subcommands()


def run_thinker(args: list[str] | None = None) -> None:
    """``fit --config configs/lta_thinker.yaml`` and the other LightningCLI subcommands; errors are raised."""
    ThinkerCLI(
        LatentThoughtModule,
        ReasoningDataModule,
        trainer_class=AlignmentTrainer,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # the module's own ``optimizer`` argument does this
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"epilog": DEBUG_EPILOG},
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """The ``lit-align-thinker`` console script, with ``lit-align``'s one-line errors and ``--debug``."""
    run_entry(run_thinker, args)
