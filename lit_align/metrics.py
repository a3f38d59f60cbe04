"""Preference metrics as torchmetrics means: averaged over micro-batches and processes, never summed.

Updating them reads nothing back to the host, so logging adds no device synchronisation to a training step.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lit_align.objectives.base import ObjectiveOutput, PreferenceInputs


def pair_metrics(output: ObjectiveOutput, chosen_logps: Tensor, rejected_logps: Tensor) -> dict[str, Tensor]:
    """Per-pair values of every metric of one batch (detached), keyed by their logged names."""
    chosen, rejected = output.chosen_rewards.detach(), output.rejected_rewards.detach()
    return {
        "loss": output.losses.detach(),
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/accuracies": (chosen > rejected).float(),
        "rewards/margins": chosen - rejected,
        "logps/chosen": chosen_logps.detach(),
        "logps/rejected": rejected_logps.detach(),
        **{name: value.detach() for name, value in output.metrics.items()},
    }


class NanSkippingMean(MeanMetric):
    """The mean of the values that are not NaN, as ``MeanMetric(nan_strategy="ignore")``, without its host-side
    check (``if isnan(x).any()``, a device synchronisation on every update): a batch of NaNs (a step the
    non-finite guard skips) shows as NaN for its step and leaves the epoch's mean alone."""

    def __init__(self) -> None:
        super().__init__(nan_strategy="disable")

    def update(self, value: Tensor) -> None:
        value = value.detach().to(self.dtype).reshape(-1)
        kept = ~value.isnan()
        self.mean_value += torch.where(kept, value, 0.0).sum()
        self.weight += kept.sum()


class MetricBank(nn.Module):
    """One :class:`NanSkippingMean` per metric name, created the first time the name is seen."""

    def __init__(self) -> None:
        super().__init__()
        self.means = nn.ModuleDict()

    def __call__(self, values: dict[str, Tensor]) -> dict[str, tuple[MeanMetric, str]]:
        """Update with per-pair values; returns each metric object and its attribute path under this bank,
        to hand to ``LightningModule.log(name, metric, metric_attribute=...)``."""
        updated = {}
        for name, value in values.items():
            key = name.replace("/", "__")
            if key not in self.means:
                self.means[key] = NanSkippingMean().to(value.device)
            self.means[key](value)
            updated[name] = (self.means[key], f"means.{key}")
        return updated


def log_pair_metrics(module: L.LightningModule, stage: str, bank: MetricBank, output: ObjectiveOutput,
                     inputs: PreferenceInputs) -> None:
    """Log a step's per-pair metrics (:func:`pair_metrics`) as ``{stage}/{name}``, averaged by ``bank``'s means
    over micro-batches and processes; per step (training) and per epoch."""
    values = pair_metrics(output, inputs.policy_chosen_logps, inputs.policy_rejected_logps)
    for name, (metric, attribute) in bank(values).items():
        module.log(f"{stage}/{name}", metric, metric_attribute=f"{stage}_metrics.{attribute}",
                   on_step=stage == "train", on_epoch=True, prog_bar=name in ("loss", "rewards/accuracies"),
                   batch_size=len(output.losses))
