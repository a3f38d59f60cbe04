"""The metric bank's means: NaNs left out as ``nan_strategy="ignore"`` would, and no value read on the host."""

from __future__ import annotations

import math

import pytest
import torch

from lit_align.metrics import MetricBank, NanSkippingMean


def test_mean_over_updates_leaves_nans_out():
    batches = [torch.tensor([1.0, float("nan"), 3.0]), torch.tensor([float("nan")] * 2), torch.tensor([-2.5, 7.0])]
    mean = NanSkippingMean()
    step_values = [mean(batch) for batch in batches]
    kept = [v for batch in batches for v in batch.double().tolist() if not math.isnan(v)]
    assert mean.compute().item() == pytest.approx(sum(kept) / len(kept), rel=1e-6)
    assert step_values[0].item() == pytest.approx(2.0) and step_values[2].item() == pytest.approx(2.25)
    assert math.isnan(step_values[1].item())  # a batch of NaNs shows as NaN for its step only


def test_updates_read_nothing_on_the_host(monkeypatch):
    bank = MetricBank()
    values = {"loss": torch.tensor([0.5, float("nan")]), "rewards/margins": torch.tensor([1.0, 2.0])}
    bank(values)  # metrics are created on first sight

    def refuse(*args, **kwargs):
        raise AssertionError("a host read (device synchronisation) in a metric update")

    for name in ("item", "__bool__", "tolist", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    updated = bank(values)
    monkeypatch.undo()
    assert updated["loss"][0].compute().item() == pytest.approx(0.5)
    assert updated["rewards/margins"][1] == "means.rewards__margins"
