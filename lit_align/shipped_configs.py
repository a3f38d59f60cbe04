"""The configs lit-align ships, as package data (``lit_align/configs``; ``configs/`` in a clone points there):
found by name (``--config quickstart``, ``--config overlays/fsdp2``), listed and copied out to edit
(``lit-align configs``, ``lit-align configs copy NAME [DEST]``), as torchtune's ``tune ls`` and ``tune cp`` do.
A ``--config`` that names an existing file is that file, as always.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from lit_align.errors import ConfigError

ROOT = Path(__file__).resolve().parent / "configs"
USAGE = "usage: lit-align configs [copy NAME [DEST]]"


def shipped() -> dict[str, Path]:
    """Every shipped config by name: its path below ``lit_align/configs`` without ``.yaml``."""
    return {path.relative_to(ROOT).with_suffix("").as_posix(): path for path in sorted(ROOT.rglob("*.yaml"))}


def with_shipped_configs(args: list[str]) -> list[str]:
    """``args`` with each ``--config NAME`` (or ``-c``, ``--config=``) that is no file but a shipped config's name
    replaced by that config's path."""
    resolved, configs = [], shipped()
    for index, arg in enumerate(args):
        named = args[index - 1] in ("-c", "--config") if index else False
        if arg.startswith("--config="):
            resolved.append(f"--config={_path(arg.split('=', 1)[1], configs)}")
        else:
            resolved.append(_path(arg, configs) if named else arg)
    return resolved


def configs_command(args: list[str]) -> None:
    """``lit-align configs``: list the shipped configs; ``copy NAME [DEST]``: copy one out to edit."""
    configs = shipped()
    if not args:
        width = max(map(len, configs))
        for name, path in configs.items():
            sys.stdout.write(f"{name:<{width}}  {_summary(path)}\n")
        return
    if args[0] != "copy" or len(args) not in (2, 3):
        raise ConfigError("configs", " ".join(args), USAGE)
    if args[1] not in configs:
        raise ConfigError("configs copy", args[1], f"not a shipped config; they are {', '.join(configs)}")
    target = Path(args[2] if len(args) == 3 else f"{Path(args[1]).name}.yaml")
    target = target / f"{Path(args[1]).name}.yaml" if target.is_dir() else target
    if target.exists():
        raise ConfigError("configs copy", str(target), "exists already: give another destination")
    shutil.copyfile(configs[args[1]], target)
    sys.stdout.write(f"{target}: copied from {args[1]}; run it with lit-align fit --config {target}\n")


def _path(value: str, configs: dict[str, Path]) -> str:
    return str(configs[value]) if not Path(value).exists() and value in configs else value


def _summary(path: Path) -> str:
    """The config's first comment line: what it runs."""
    first = next((line for line in path.read_text().splitlines() if line.startswith("#")), "#")
    return first.lstrip("# ").strip()
