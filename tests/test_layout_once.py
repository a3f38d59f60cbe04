"""The layout is decided once (issue 25, item 4): when ``fit`` starts the module tells the data module which
layout it runs, and the training and validation batches are built in that one alone."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback

from lit_align.models.policy import PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import DPO
from tests.test_module import make_data, make_trainer


class BatchKeys(Callback):
    def __init__(self) -> None:
        self.seen: list[set[str]] = []
        self.layout: str | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append(set(batch))
        self.layout = trainer.datamodule.layout

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.seen.append(set(batch))


def keys_and_losses(tmp_path, model_dir, tokenizer_dir, explicit_file, packing: bool):
    recorder, losses = BatchKeys(), []
    module = AlignmentModule(DPO(), PolicySpec(path=model_dir), packing=packing,
                             optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    module.on_before_backward = lambda loss: losses.append(loss.item())
    trainer = make_trainer(tmp_path, 3, callbacks=[recorder], limit_val_batches=1)
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.25)
    trainer.fit(module, data)
    assert data.layout is None  # after the fit, its loaders build both layouts again
    return recorder.layout, recorder.seen, losses


def test_batches_are_built_in_the_layout_the_module_runs(tmp_path, model_dir, tokenizer_dir, explicit_file):
    layout, seen, packed_losses = keys_and_losses(tmp_path / "packed", model_dir, tokenizer_dir, explicit_file, True)
    assert layout == "packed" and seen and all(keys == {"example_key", "packed"} for keys in seen)
    layout, seen, padded_losses = keys_and_losses(tmp_path / "padded", model_dir, tokenizer_dir, explicit_file, False)
    assert layout == "padded" and all("packed" not in keys and "input_ids" in keys for keys in seen)
    torch.testing.assert_close(packed_losses, padded_losses, atol=1e-5, rtol=0)  # the same steps either way
