"""``python -m lit_align.online.reward_cli fit --config reward_model.yaml``: train a
:class:`~lit_align.online.RewardModel` on preference pairs with LightningCLI.

The same :class:`~lit_align.cli.AlignmentCLI` as ``lit-align`` (one-line errors, ``--ckpt_path=last``, checkpoints
written atomically and read weights-only) with the reward model in place of the alignment module, given by
``model.class_path: lit_align.online.RewardModel`` as the thinker's configs name theirs; the data module is
:class:`~lit_align.data.PreferenceDataModule`, whose tokenizer defaults to ``model.classifier.path``.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from lit_align.cli import DEBUG_EPILOG, AlignmentCLI
from lit_align.data.datamodule import PreferenceDataModule
from lit_align.errors import run_entry
from lit_align.online.reward_model import RewardModel
from lit_align.trainer import AlignmentTrainer


class RewardModelCLI(AlignmentCLI):
    """:class:`~lit_align.cli.AlignmentCLI` without ``precompute`` (no reference model to store)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return LightningCLI.subcommands()

    def before_instantiate_classes(self) -> None:
        """An unset data tokenizer is the reward model's (``model.classifier.path``), when the pairs come from
        ``path``."""
        config = self.config.get(self.subcommand) or self.config
        data = config.get("data.init_args")
        if data is not None and data.get("tokenizer") is None and data.get("source") is None:
            data.tokenizer = config.get("model.init_args.classifier.path")
        super().before_instantiate_classes()


def run_reward_model(args: list[str] | None = None) -> None:
    """``fit`` / ``validate`` and the other LightningCLI subcommands; errors are raised."""
    RewardModelCLI(
        RewardModel,
        PreferenceDataModule,
        trainer_class=AlignmentTrainer,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,  # the module's own optimizer and schedule arguments do this
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"epilog": DEBUG_EPILOG},
        args=args,
    )


def main(args: list[str] | None = None) -> None:
    """The reward model's console entry, with ``lit-align``'s one-line errors and ``--debug``."""
    run_entry(run_reward_model, args)


if __name__ == "__main__":
    main()
