"""``lit-align``: LightningCLI for alignment (``fit``, ``validate``, ``test``, ``predict``, ``precompute``), and
``lit-align export`` (:mod:`lit_align.export`), which needs no trainer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml
from jsonargparse import ArgumentError, auto_cli
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_align.data.datamodule import PreferenceDataModule
from lit_align.errors import ConfigError, parse_error_line, run_entry
from lit_align.export import export_checkpoint
from lit_align.module import AlignmentModule
from lit_align.paths import local_path
from lit_align.reference.store import STORE_FILE, OfflineStore
from lit_align.shipped_configs import configs_command, with_shipped_configs
from lit_align.suggest import with_suggestions
from lit_align.trainer import AlignmentTrainer

_CKPT_ALIASES = {"last", "best", "hpc", "registry"}
EXPORT_EPILOG = ("export: write a checkpoint's policy as a save_pretrained model (lit-align export --ckpt_path CKPT "
                 "--output_dir DIR [--merge true] [--dtype bfloat16]; lit-align export --help). configs: list the "
                 "shipped configs (lit-align configs; lit-align configs copy NAME [DEST]); --config takes a shipped "
                 "config's name (--config quickstart)")
DEBUG_EPILOG = "--debug (or LIT_ALIGN_DEBUG=1): show an error's traceback, not its one line"


class AlignmentCLI(LightningCLI):
    """``lit-align fit --config configs/quickstart.yaml``; ``lit-align precompute --config ...`` fills the
    offline reference store named by ``model.reference``."""

    model_path_key: str | None = "model.policy.path"
    """The config key of the model path an unset data tokenizer defaults to (``None``: no default)."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "precompute": {"model", "datamodule"}}

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        """Parse errors are raised (and printed by :func:`main` as one line), not printed with the usage."""
        return super().init_parser(**{"exit_on_error": False, **kwargs})

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Remember each subcommand's parser, whose keys a misspelt one is matched against."""
        self.subcommand_parsers = [*getattr(self, "subcommand_parsers", []), parser]

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        """LightningCLI's parsing; a misspelt key or class path gets "did you mean" (:mod:`lit_align.suggest`)."""
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            keys = {key for known in getattr(self, "subcommand_parsers", []) for key in _keys(known)}
            line = parse_error_line(str(error))
            raise ArgumentError(None, with_suggestions(line, keys)) from error

    def _parse_ckpt_path(self) -> None:
        """Keep the settings the user gave. LightningCLI (2.6) replaces the parsed ``model`` section by the
        checkpoint's saved hyperparameters when ``ckpt_path`` is given, so a resume with a lowered learning rate or
        another objective silently ran the old ones; here the run is what its config says, and
        :mod:`lit_align.identity.resume` compares it with the checkpoint's run, refusing what changes a step unless
        allowed. The override of a private hook: LightningCLI offers no public switch for this."""

    def before_instantiate_classes(self) -> None:
        """Check that a checkpoint path given to resume from exists before anything is built (``last`` is this run's
        last, found by :class:`~lit_align.trainer.AlignmentTrainer`); a precompute writes no config file of its own (its
        store carries the run's fingerprint). A data module's unset ``tokenizer`` is the policy's when its pairs
        come from ``path`` (a ``source`` may bring its own): the model path is given once."""
        config = self.config.get(self.subcommand) or self.config
        init_args = config.get("data.init_args")
        if self.model_path_key and init_args is not None and "tokenizer" in init_args and init_args.tokenizer is None \
                and init_args.get("source") is None:
            init_args.tokenizer = config.get(self.model_path_key)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is not None and ckpt_path not in _CKPT_ALIASES and "://" not in ckpt_path:
            config["ckpt_path"] = local_path("ckpt_path", ckpt_path)
        if self.subcommand == "precompute":
            self.save_config_callback = None

    def _check_store(self) -> None:
        """A run that reads an offline store needs it built first (before the data is tokenised)."""
        reference = getattr(self.model, "reference", None)
        if isinstance(reference, OfflineStore) and not (Path(reference.path) / STORE_FILE).is_file():
            raise ConfigError("model.reference.path", reference.path, f"no reference store there (no {STORE_FILE}); "
                              "create it first with `lit-align precompute` and the same config")

    before_fit = before_validate = before_test = before_predict = _check_store


class MethodCLI(AlignmentCLI):
    """:class:`AlignmentCLI` for the other methods' modules, named by ``model.class_path`` (``subclass_mode_model``),
    without ``precompute`` (no offline reference to store): the thinker's, the on-policy module's and the reward
    model's command lines. ``model_path`` names the model argument whose path an unset data tokenizer defaults to
    (``policy.path``; none for the thinker, whose data module has its own)."""

    def __init__(self, model_class: type, datamodule_class: type, model_path: str | None = None,
                 args: list[str] | None = None) -> None:
        self.model_path_key = f"model.init_args.{model_path}" if model_path else None
        super().__init__(model_class, datamodule_class, trainer_class=AlignmentTrainer, subclass_mode_model=True,
                         subclass_mode_data=True,
                         auto_configure_optimizers=False,  # the module's own optimizer (and schedule) arguments
                         save_config_kwargs={"overwrite": True}, parser_kwargs={"epilog": DEBUG_EPILOG}, args=args)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return LightningCLI.subcommands()


def _keys(parser: LightningArgumentParser) -> list[str]:
    """Every dotted key ``parser`` knows (the nested keys of its defaults, and each group's own)."""
    return [*parser.get_defaults().keys(), *(name for name in parser.groups if name)]


def main(args: list[str] | None = None) -> None:
    """The ``lit-align`` console script, with one-line errors (:func:`~lit_align.errors.run_entry`). A ``--config``
    whose ``model.class_path`` names :class:`~lit_align.thinker.LatentThoughtModule` runs with that module's CLI
    (:mod:`lit_align.thinker.cli`), one naming :class:`~lit_align.online.on_policy.OnPolicyModule` or
    :class:`~lit_align.online.RewardModel` with :class:`MethodCLI` for that module, so every method runs as
    ``lit-align fit --config configs/x.yaml``."""
    run_entry(_run, args)


def _run(args: list[str] | None) -> None:
    given = with_shipped_configs(sys.argv[1:] if args is None else args)
    args = given if args is not None else None
    sys.argv[1:] = given if args is None else sys.argv[1:]
    if given[:1] == ["export"]:
        auto_cli(export_checkpoint, args=given[1:], as_positional=False)
    elif given[:1] == ["configs"]:
        configs_command(given[1:])
    elif _names_model(given, THOUGHT_MODELS):
        from lit_align.thinker.cli import run_thinker

        run_thinker(args)
    elif _names_model(given, ON_POLICY_MODELS):
        from lit_align.online.on_policy import OnPolicyModule

        MethodCLI(OnPolicyModule, PreferenceDataModule, model_path="policy.path", args=args)
    elif _names_model(given, REWARD_MODELS):
        from lit_align.online.reward_model import RewardModel

        MethodCLI(RewardModel, PreferenceDataModule, model_path="classifier.path", args=args)
    else:
        AlignmentCLI(
            AlignmentModule,
            PreferenceDataModule,
            trainer_class=AlignmentTrainer,
            subclass_mode_data=True,
            auto_configure_optimizers=False,  # the module's own optimizer and schedule arguments do this
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"epilog": f"{EXPORT_EPILOG}. {DEBUG_EPILOG}"},
            args=args,
        )


THOUGHT_MODELS = frozenset({"lit_align.thinker.LatentThoughtModule", "lit_align.thinker.module.LatentThoughtModule"})
"""The ``model.class_path`` values that route ``lit-align`` to the thinker's CLI (a subclass of
``LatentThoughtModule`` runs through ``lit-align-thinker``, whose parser checks it is one)."""
ON_POLICY_MODELS = frozenset({"lit_align.online.OnPolicyModule", "lit_align.online.on_policy.OnPolicyModule"})
"""The ``model.class_path`` values that route ``lit-align`` to :class:`MethodCLI` with the on-policy module (its
data module: a ``PromptDataModule``, by ``data.class_path``)."""
REWARD_MODELS = frozenset({"lit_align.online.RewardModel", "lit_align.online.reward_model.RewardModel"})
"""The ``model.class_path`` values that route ``lit-align`` to :class:`MethodCLI` with the reward model."""


def _names_model(args: list[str], class_paths: frozenset[str]) -> bool:
    """Whether a ``--config`` file among ``args`` names one of ``class_paths`` as ``model.class_path``; read as text,
    importing nothing a config names (the parser validates a class path before it is imported)."""
    paths = [value for flag, value in zip(args, args[1:], strict=False) if flag in ("-c", "--config")]
    paths += [arg.split("=", 1)[1] for arg in args if arg.startswith("--config=")]
    for path in filter(os.path.isfile, paths):
        model = (yaml.safe_load(Path(path).read_text()) or {}).get("model")
        if isinstance(model, dict) and model.get("class_path") in class_paths:
            return True
    return False
