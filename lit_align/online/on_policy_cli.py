"""``lit-align fit --config configs/online.yaml`` (or ``python -m lit_align.online.on_policy_cli``): LightningCLI for
on-policy training, :class:`~lit_align.online.on_policy.OnPolicyModule` on a
:class:`~lit_align.online.prompts.PromptDataModule`.

The same :class:`~lit_align.cli.AlignmentCLI` (one-line errors, ``--ckpt_path=last``, checkpoints written atomically
and read weights-only) with the on-policy module in ``subclass_mode_model``, as the thinker's and the reward model's
CLIs take theirs; ``lit-align`` routes a config whose ``model.class_path`` names the module here. There is no
``precompute``: on-policy pairs have no reference log-probs to store in advance.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from lit_align.cli import DEBUG_EPILOG, AlignmentCLI
from lit_align.data.datamodule import PreferenceDataModule
from lit_align.errors import run_entry
from lit_align.online.on_policy import OnPolicyModule
from lit_align.trainer import AlignmentTrainer


class OnPolicyCLI(AlignmentCLI):
    """:class:`~lit_align.cli.AlignmentCLI` without ``precompute``."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return LightningCLI.subcommands()

    def before_instantiate_classes(self) -> None:
        """An unset data tokenizer is the policy's (``model.init_args.policy.path``) when the data comes from
        ``path``."""
        config = self.config.get(self.subcommand) or self.config
        data = config.get("data.init_args")
        if data is not None and data.get("tokenizer") is None and data.get("source") is None:
            data.tokenizer = config.get("model.init_args.policy.path")
        super().before_instantiate_classes()


def run_on_policy(args: list[str] | None = None) -> None:
    """``fit`` and the other LightningCLI subcommands; errors are raised."""
    OnPolicyCLI(
        OnPolicyModule,
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
    """The on-policy console entry, with ``lit-align``'s one-line errors and ``--debug``."""
    run_entry(run_on_policy, args)


if __name__ == "__main__":
    main()
