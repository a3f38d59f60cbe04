"""``lit-align``: LightningCLI for alignment (``fit``, ``validate``, ``test``, ``predict``, ``precompute``), and
``lit-align export`` (:mod:`lit_align.export`), which needs no trainer."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from jsonargparse import ArgumentError, auto_cli
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_align.data.datamodule import PreferenceDataModule
from lit_align.errors import ConfigError, find_config_error, find_input_error, parse_error_line
from lit_align.export import export_checkpoint
from lit_align.module import AlignmentModule
from lit_align.paths import local_path
from lit_align.reference.store import STORE_FILE, OfflineStore
from lit_align.trainer import AlignmentTrainer

_CKPT_ALIASES = {"last", "best", "hpc", "registry"}


class AlignmentCLI(LightningCLI):
    """``lit-align fit --config configs/quickstart.yaml``; ``lit-align precompute --config ...`` fills the
    offline reference store named by ``model.reference``."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "precompute": {"model", "datamodule"}}

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        """Parse errors are raised (and printed by :func:`main` as one line), not printed with the usage."""
        return super().init_parser(**{"exit_on_error": False, **kwargs})

    def before_instantiate_classes(self) -> None:
        """Check the checkpoint to resume from before anything is built (``last``: the newest ``last.ckpt`` of the
        run's directory, whichever ``version_N`` wrote it); a precompute writes no config file of its own (its
        store carries the run's fingerprint). A data module's unset ``tokenizer`` is the policy's when its pairs
        come from ``path`` (a ``source`` may bring its own): the model path is given once."""
        config = self.config.get(self.subcommand) or self.config
        init_args = config.get("data.init_args")
        if init_args is not None and "tokenizer" in init_args and init_args.tokenizer is None \
                and init_args.get("source") is None:
            init_args.tokenizer = config.get("model.policy.path")
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            config["ckpt_path"] = latest_last_checkpoint(config.get("trainer.default_root_dir") or ".") or "last"
        elif ckpt_path is not None and ckpt_path not in _CKPT_ALIASES and "://" not in ckpt_path:
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


def latest_last_checkpoint(root: str) -> str | None:
    """The newest ``last.ckpt`` under ``root`` (Lightning's own ``"last"`` looks only in the new run's
    ``version_N+1``, where there is none yet); ``None`` when there is none."""
    found = sorted(Path(root).glob("**/last.ckpt"), key=lambda path: path.stat().st_mtime)
    return str(found[-1].resolve()) if found else None


def main(args: list[str] | None = None) -> None:
    """The ``lit-align`` console script. A wrong setting ends in one line on stderr, ``error: <key>=<value>:
    <expected>``, and exit status 2; bad input that lit-align itself refuses (a data file, a store) in one line
    ``error: <message>`` and exit status 1. ``--debug`` (or ``LIT_ALIGN_DEBUG=1``) shows the traceback instead;
    any other exception (a bug, a library's own failure) keeps its traceback."""
    given = sys.argv[1:] if args is None else list(args)
    debug = "--debug" in given or os.environ.get("LIT_ALIGN_DEBUG", "") not in ("", "0")
    if args is None:  # LightningCLI warns when it is given args while sys.argv holds some too
        sys.argv[1:] = [arg for arg in given if arg != "--debug"]
    else:
        args = [arg for arg in given if arg != "--debug"]
    try:
        if args is None and sys.argv[1:2] == ["export"] or args is not None and args[:1] == ["export"]:
            auto_cli(export_checkpoint, args=(sys.argv[2:] if args is None else args[1:]), as_positional=False)
            return
        AlignmentCLI(
            AlignmentModule,
            PreferenceDataModule,
            trainer_class=AlignmentTrainer,
            subclass_mode_data=True,
            auto_configure_optimizers=False,  # the module's own optimizer and schedule arguments do this
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"epilog": "--debug (or LIT_ALIGN_DEBUG=1): show an error's traceback, not its one line"},
            args=args,
        )
    except (ArgumentError, ValueError, FileNotFoundError) as error:
        if debug:
            raise
        if (cause := find_config_error(error)) is not None or isinstance(error, ArgumentError):
            line, status = str(cause) if cause is not None else parse_error_line(str(error)), 2
        elif (cause := find_input_error(error)) is not None:
            line, status = str(cause), 1
        else:
            raise
        sys.stderr.write(f"error: {line}\n")
        raise SystemExit(status) from None
