"""Preference metrics as torchmetrics means: averaged over micro-batches and processes, never summed."""

from __future__ import annotations

from torch import Tensor, nn
from torchmetrics import MeanMetric

from lit_align.objectives.base import ObjectiveOutput


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


class MetricBank(nn.Module):
    """One :class:`~torchmetrics.MeanMetric` per metric name, created the first time the name is seen."""

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
                self.means[key] = MeanMetric().to(value.device)
            self.means[key](value)
            updated[name] = (self.means[key], f"means.{key}")
        return updated
