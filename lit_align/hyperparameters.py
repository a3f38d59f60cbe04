"""A LightningModule's (or LightningDataModule's) hyperparameters, saved as plain data so that checkpoints load
weights-only."""

from __future__ import annotations

from dataclasses import is_dataclass
from types import FrameType

import lightning as L


def save_plain_hyperparameters(module: L.LightningModule | L.LightningDataModule, frame: FrameType | None) -> None:
    """``module.save_hyperparameters()`` from the ``__init__`` running in ``frame``, less the Python objects.

    Built by LightningCLI, the module's hyperparameters are its parsed config (plain data), so checkpoints
    load weights-only and ``load_from_checkpoint`` rebuilds the module alone. Built from Python, objects are
    left out (they would need pickle) and ``load_from_checkpoint`` takes them again as keyword arguments.
    """
    module.save_hyperparameters(frame=frame)
    plain = (str, int, float, bool, type(None), dict, list)
    objects = [name for name, value in module.hparams.items() if not isinstance(value, plain) or is_dataclass(value)]
    if objects:
        module.save_hyperparameters(ignore=objects, frame=frame)
