"""Stopping a run mid-epoch and resuming from its checkpoint reproduces the uninterrupted run exactly: the same
batches in the same order, the same per-step losses."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DistributedSampler

from lit_align.data.sampler import TrainOrder
from lit_align.models.policy import PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO
from tests.distributed_run import StepRecorder
from tests.test_module import make_data, make_trainer


def fit(root, model_dir, tokenizer_dir, explicit_file, resume=None) -> StepRecorder:
    recorder = StepRecorder()
    saver = ModelCheckpoint(dirpath=root / "checkpoints", filename="{step}", every_n_train_steps=4, save_top_k=-1)
    module = AlignmentModule(FDPO(beta=0.5), PolicySpec(path=model_dir), optimizer=partial(torch.optim.AdamW, lr=3e-3))
    # 24 pairs in batches of 4: six steps an epoch, so steps 4 and 8 are both mid-epoch
    trainer = make_trainer(root, 11, callbacks=[recorder, saver], enable_checkpointing=True, limit_val_batches=0)
    trainer.fit(module, make_data(explicit_file, tokenizer_dir, val_fraction=0.0), ckpt_path=resume)
    return recorder


def test_mid_epoch_resume_repeats_the_uninterrupted_run(tmp_path, model_dir, tokenizer_dir, explicit_file):
    whole = fit(tmp_path / "whole", model_dir, tokenizer_dir, explicit_file)
    assert len(whole.losses) == 11 and len({key for keys in whole.keys[:6] for key in keys}) == 24
    assert whole.keys[6:] != whole.keys[:5]  # the second epoch is shuffled anew
    for step in (4, 8):
        checkpoint = tmp_path / "whole" / "checkpoints" / f"step={step}.ckpt"
        resumed = fit(tmp_path / f"from{step}", model_dir, tokenizer_dir, explicit_file, resume=checkpoint)
        assert resumed.keys == whole.keys[step:]
        assert resumed.losses == whole.losses[step:]  # exactly


def test_train_order_deals_one_shuffle_to_the_processes():
    pairs = list(range(10))
    alone = list(TrainOrder(pairs, seed=3))
    shares = [list(TrainOrder(pairs, num_replicas=2, rank=rank, seed=3)) for rank in (0, 1)]
    assert sorted(alone) == pairs and alone != pairs
    assert [pair for step in zip(*shares, strict=True) for pair in step] == alone
    assert shares == [list(DistributedSampler(pairs, num_replicas=2, rank=rank, seed=3)) for rank in (0, 1)]


def test_train_order_position_and_epochs():
    order = TrainOrder(list(range(10)), num_replicas=2, rank=1, seed=0)
    first_epoch = list(order)
    order.advance(2)  # a batch of 2 on each of the 2 processes
    assert list(order) == first_epoch[2:]
    restored = TrainOrder(list(range(10)), num_replicas=2, rank=1, seed=0)
    restored.load_state_dict(order.state_dict())
    assert list(restored) == first_epoch[2:] and len(restored) == 5  # the epoch's length stays whole
    restored.set_epoch(0)  # Lightning sets the epoch again on resume: the position stays
    assert list(restored) == first_epoch[2:]
    restored.set_epoch(1)
    assert len(list(restored)) == 5 and list(restored) != first_epoch


@pytest.mark.parametrize("processes", [2, 3])
def test_train_order_pads_to_even_shares(processes):
    shares = [list(TrainOrder(list(range(7)), num_replicas=processes, rank=r)) for r in range(processes)]
    assert len({len(share) for share in shares}) == 1 and set().union(*shares) == set(range(7))
