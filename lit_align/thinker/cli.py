"""``lit-align-thinker`` (or ``python -m lit_align.thinker``, or ``lit-align`` given a config whose
``model.class_path`` is ``LatentThoughtModule``): LightningCLI for latent-thought training.

:class:`~lit_align.cli.MethodCLI` (``lit-align``'s one-line errors and ``--ckpt_path=last``, without ``precompute``)
with ``LatentThoughtModule`` in ``subclass_mode_model``: ``lit-align``'s own parser fixes ``AlignmentModule`` (its
configs name no model ``class_path``), which is how ``lit-align`` tells the configs apart."""

from __future__ import annotations

from lit_align.cli import MethodCLI
from lit_align.errors import run_entry
from lit_align.thinker.datamodule import ReasoningDataModule
from lit_align.thinker.module import LatentThoughtModule


def run_thinker(args: list[str] | None = None) -> None:
    """``fit --config configs/lta_thinker.yaml`` and the other LightningCLI subcommands; errors are raised."""
    MethodCLI(LatentThoughtModule, ReasoningDataModule, args=args)


def main(args: list[str] | None = None) -> None:
    """The ``lit-align-thinker`` console script, with ``lit-align``'s one-line errors and ``--debug``."""
    run_entry(run_thinker, args)
