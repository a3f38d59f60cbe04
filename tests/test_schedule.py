"""The learning-rate schedule (``model.schedule``): linear warmup then cosine, linear or constant, sized from the
run's optimizer steps, in a real Trainer run, against the curve written out from its definition."""

from __future__ import annotations

import math

import pytest
from lightning.pytorch.callbacks import Callback

from lit_align.models.policy import PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO
from lit_align.schedule import Schedule
from tests.test_module import adam, make_data, make_trainer

LR = 1e-3


class LearningRates(Callback):
    """The learning rate each optimizer step runs with."""

    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.rates.append(optimizer.param_groups[0]["lr"])


def expected(decay: str, step: int, warmup: int, total: int) -> float:
    """Linear warmup from 0, then the decay, from the definition (as transformers writes it)."""
    if step < warmup:
        return LR * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return LR * {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress, "constant": 1.0}[decay]


@pytest.mark.parametrize(("decay", "warmup", "accumulate", "steps"), [
    ("cosine", 0.25, 2, 8),  # a fraction of the 8 optimizer steps: 2 warmup steps
    ("linear", 3, 1, 6),  # steps
    ("constant", 2, 1, 5),
])
def test_schedule_follows_its_curve(tmp_path, model_dir, tokenizer_dir, explicit_file, decay, warmup, accumulate,
                                    steps):
    rates = LearningRates()
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir), optimizer=adam(LR),
                             schedule=Schedule(decay=decay, warmup=warmup))
    make_trainer(tmp_path, steps, callbacks=[rates], accumulate_grad_batches=accumulate, limit_val_batches=0).fit(
        module, make_data(explicit_file, tokenizer_dir, val_fraction=0.0))
    warmup_steps = warmup if isinstance(warmup, int) else round(warmup * steps)
    assert rates.rates == pytest.approx([expected(decay, k, warmup_steps, steps) for k in range(steps)], abs=1e-12)


def test_schedule_length_comes_from_the_trainers_estimate(tmp_path, model_dir, tokenizer_dir, explicit_file):
    """One epoch of 24 pairs in batches of 4, two batches per optimizer step: 3 optimizer steps."""
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir), optimizer=adam(LR),
                             schedule=Schedule(decay="linear", warmup=0.0))
    rates = LearningRates()
    trainer = make_trainer(tmp_path, -1, max_epochs=1, accumulate_grad_batches=2, callbacks=[rates],
                           limit_val_batches=0)
    trainer.fit(module, make_data(explicit_file, tokenizer_dir, val_fraction=0.0))
    assert rates.rates == pytest.approx([LR, LR * 2 / 3, LR / 3], abs=1e-12)
    assert Schedule(warmup=0.5, length=0.5).steps(10) == (2, 5)


@pytest.mark.parametrize("settings", [{"warmup": 1.5}, {"warmup": -1}, {"length": 2.0}, {"decay": "step"}])
def test_schedule_refuses_bad_settings(settings):
    with pytest.raises(ValueError, match="schedule"):
        Schedule(**settings)


def test_schedule_or_scheduler_not_both(model_dir):
    with pytest.raises(ValueError, match="not both"):
        AlignmentModule(FDPO(), PolicySpec(path=model_dir), schedule=Schedule(), lr_scheduler=lambda o: None)
