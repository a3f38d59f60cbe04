"""Warnings where a run's result would surprise: one line each, at the start of ``fit``.

- more processes on this machine than it has CPU cores, on the CPU: each process gets a fraction of a core, and
  the run is slower than one process;
- a β so small that the loss cannot leave ln 2: DPO-style losses are ``-log σ(β · margin)``; below β = 1e-3 the
  log-ratio margin must pass 100 nats for the loss to move by 0.05, so the policy barely trains.
"""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

TINY_BETA = 1e-3


def warn_of_surprises(trainer: L.Trainer, module: L.LightningModule) -> None:
    """Warn, once each, of the settings above."""
    cores = os.cpu_count() or 1
    if trainer.accelerator.__class__.__name__ == "CPUAccelerator" and trainer.num_devices > cores:
        rank_zero_warn(f"trainer.devices={trainer.num_devices} CPU processes on a machine with {cores} cores: each "
                       "gets a fraction of a core and the run is slower than one process; set "
                       f"--trainer.devices={cores} or fewer")
    beta = getattr(getattr(module, "objective", None), "beta", None)
    if isinstance(beta, float | int) and beta < TINY_BETA:
        rank_zero_warn(f"model.objective.beta={beta}: the loss -log σ(β · margin) stays within 0.05 of ln 2 until "
                       f"the log-ratio margin passes {0.1 / beta:.0f} nats, so the policy barely moves; β is "
                       "typically 0.01–0.5")
