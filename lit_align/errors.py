"""``ConfigError``: a setting a user gave is wrong; and the one line ``lit-align`` prints for it.

Every check of a user's setting (a path, a count, two lengths that do not fit) raises :class:`ConfigError` with
the setting's config key, its value and what was expected. The CLIs (``lit-align``, ``lit-align-thinker``, both
through :func:`run_entry`) print it as ``error: <key>=<value>: <expected>`` and exit with status 2, without a
traceback (``--debug`` shows it). From Python it is a ``ValueError`` like any other.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentError

_PACKAGE = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A setting's value is wrong.

    Args:
        key: the setting's config key as a user types it, e.g. ``data.batch_size``.
        value: the value that was given.
        expected: what was expected, and how to fix it.
    """

    def __init__(self, key: str, value: Any, expected: str) -> None:
        super().__init__(f"{key}={value!r}: {expected}")
        self.key = key
        self.value = value
        self.expected = expected


def run_entry(entry: Callable[[list[str] | None], None], args: list[str] | None = None) -> None:
    """Run a console entry (``lit-align``, ``lit-align-thinker``) on ``args`` (``None``: ``sys.argv``). A wrong
    setting ends in one line on stderr, ``error: <key>=<value>: <expected>``, and exit status 2; bad input that
    lit-align itself refuses (a data file, a store) in one line ``error: <message>`` and exit status 1.
    ``--debug`` (or ``LIT_ALIGN_DEBUG=1``) shows the traceback instead. An exception raised while handling one of
    these (a distributed peer that exited on the same refusal, failing the teardown's collective) is that line
    too; any other exception (a bug, a library's own failure) keeps its traceback."""
    given = sys.argv[1:] if args is None else list(args)
    debug = "--debug" in given or os.environ.get("LIT_ALIGN_DEBUG", "") not in ("", "0")
    if args is None:  # LightningCLI warns when it is given args while sys.argv holds some too
        sys.argv[1:] = [arg for arg in given if arg != "--debug"]
    else:
        args = [arg for arg in given if arg != "--debug"]
    try:
        entry(args)
    except Exception as error:  # lit-align's own refusal, or one behind a failure it caused (a peer's teardown)
        if debug:
            raise
        if (cause := find_config_error(error)) is not None or isinstance(error, ArgumentError):
            line, status = str(cause) if cause is not None else parse_error_line(str(error)), 2
        elif (cause := find_machine_error(error)) is not None:
            line, status = machine_error_line(cause), 2
        elif (cause := find_input_error(error)) is not None:
            line, status = str(cause), 1
        else:
            raise
        sys.stderr.write("".join(f"error: {part}\n" for part in line.splitlines()))
        sys.stderr.flush()
        leave_process_group()
        raise SystemExit(status) from None


def leave_process_group() -> None:
    """Destroy this process's distributed group, if it has one, before exiting on a refusal: a gloo group left to
    the interpreter's shutdown can abort the process ("terminate called without an active exception", status -6)
    instead of letting it exit with the refusal's status. Best effort: the line is already written."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a peer already gone; exiting anyway
            pass


def find_config_error(error: BaseException) -> ConfigError | None:
    """The :class:`ConfigError` behind ``error`` (itself, or a cause jsonargparse wrapped it in), if any."""
    return next((link for link in _chain(error) if isinstance(link, ConfigError)), None)


def find_machine_error(error: BaseException) -> BaseException | None:
    """The error behind ``error`` that Lightning raised choosing the accelerator, devices or strategy (a GPU
    asked for on a machine without one, FSDP on a CPU), if any."""
    return next((link for link in _chain(error) if _last_frame_file(link).name == "accelerator_connector.py"), None)


def machine_error_line(error: BaseException) -> str:
    """Lightning's complaint about the trainer's hardware settings, with what this machine has and the fix."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return (f"trainer.accelerator/devices/strategy: {str(error).strip()} (this machine: {os.cpu_count()} CPU cores, "
            f"{gpus or 'no'} CUDA GPU{'' if gpus == 1 else 's'}); --trainer.accelerator=auto --trainer.devices=auto "
            "--trainer.strategy=auto runs on what is here")


def find_input_error(error: BaseException) -> ValueError | OSError | None:
    """The ``ValueError`` or ``FileNotFoundError`` that lit-align itself raised about its input (a data file, a
    store, an SAE) behind ``error``, if any; an error raised inside a library is not one (it may be a bug)."""
    return next((link for link in _chain(error)
                 if isinstance(link, ValueError | FileNotFoundError) and _raised_in_package(link)), None)


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error``, then what it was raised from (or while handling), and so on."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _raised_in_package(error: BaseException) -> bool:
    return _last_frame_file(error).resolve().is_relative_to(_PACKAGE)


def _last_frame_file(error: BaseException) -> Path:
    """The source file of the frame that raised ``error`` (an empty path when it carries no traceback)."""
    traceback = error.__traceback__
    if traceback is None:
        return Path()
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    return Path(traceback.tb_frame.f_code.co_filename)


_KEY = re.compile(r'Parser key "([^"]+)":')
_GIVEN = re.compile(r"^\s*Given value: (.*)$", re.MULTILINE)
_NOISE = ("Does not validate against any of the", "Subtypes:", "Errors:", "Given value type:", "Given value:",
          "- Expected a <class 'NoneType'>", "Problem with given class_path")
_GOT = re.compile(r"^Expected an? (?P<type>.*?)\.? Got value: (?P<value>.*)$")
_RESTRICTION = re.compile(r"^Not of type (?P<type>\w+): (?P<value>.*?) ?does not conform to restriction (?P<rule>.*)$")
_CLASS = re.compile(r"<class '(?:builtins\.)?([\w.]+)'>")


def parse_error_line(message: str) -> str:
    """jsonargparse's nested parse error (``Parser key "model.objective": ... Parser key "beta": ...``, wrapped
    in the noise of union types) as one ``<key>=<value>: <expected>`` line."""
    key = ".".join(_KEY.findall(message))
    leaves = [line.strip().removeprefix("- ").strip() for line in message.splitlines()]
    leaves = [line for line in leaves if line and not _KEY.fullmatch(line) and not line.startswith(_NOISE)]
    leaf = leaves[0] if leaves else message.strip()
    given = _GIVEN.search(message)
    if match := _RESTRICTION.match(leaf):
        value = match["value"] or (given[1] if given else "")
        return f"{key}={value}: expected a {match['type']} ({match['rule']})"
    if match := _GOT.match(leaf):
        expected = _CLASS.sub(lambda found: found[1], match["type"]).replace("typing.Literal", "one of ")
        return f"{key}={match['value']}: expected {expected}"
    return f"{key}: {leaf}" if key else leaf
