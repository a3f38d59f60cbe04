"""Attention by pair (issue 27, item 2): each pair's attention alone equals the packed row's dense masked attention,
values and gradients, with and without a sliding window; a switched model behaves as SDPA outside the packed layout
(its generations, its saved config); compiled layers are left dense."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_align.data.packing import one_row, pack_pairs
from lit_align.models.compiling import compile_decoder_layers
from lit_align.models.layout import attend_by_pair, attention_backend, pair_mask
from lit_align.models.pair_attention import BY_PAIR, pair_rows, pair_spans, sdpa_by_pair
from lit_align.models.policy import LoraSettings, PolicySpec, build_policy
from tests.test_packing import FAMILIES, PAIRS, TINY, random_pairs

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 8
LENGTHS = [(7, 5, 9), (3, 11, 2), (12, 4, 6), (0, 3, 5), (20, 1, 1), (2, 8, 8)]


class Attention(nn.Module):
    """What transformers' SDPA reads from an attention module: GQA groups, causality flag, training flag."""

    is_causal = True
    num_key_value_groups = HEADS // KV_HEADS


def dense_attention(packed: dict, query, key, value, window: int | None):
    """The packed rows' dense SDPA with the whole row's mask, ``(R, L, heads, head_dim)``."""
    key, value = (t.repeat_interleave(HEADS // KV_HEADS, dim=1) for t in (key, value))
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=pair_mask(packed, window))
    return output.transpose(1, 2)


@pytest.mark.parametrize(("row_tokens", "window", "joined"), [(None, None, False), (30, None, False), (30, 4, False),
                                                          (30, None, True)])
def test_each_pair_alone_equals_the_row_dense_masked_attention(row_tokens, window, joined):
    packed = pack_pairs(random_pairs(LENGTHS), pad_token_id=0, row_tokens=row_tokens)
    if joined:  # one row whose pairs are not in the batch's order
        packed = one_row(packed)
        assert packed["pair_spans"][:, 1].diff().lt(0).any()
    rows, length = packed["input_ids"].shape
    assert (rows > 1) == (row_tokens is not None and not joined) and ((packed["pair_index"] < 0).any() == (rows > 1))
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(rows, heads, length, HEAD_DIM, generator=generator, dtype=torch.float64, requires_grad=True)
               for heads in (HEADS, KV_HEADS, KV_HEADS)]
    real = (packed["pair_index"] >= 0)[..., None, None]
    weights = torch.randn(rows, length, HEADS, HEAD_DIM, generator=generator, dtype=torch.float64)
    results = []
    for attend in ("dense", "by_pair"):
        if attend == "dense":
            output = dense_attention(packed, *tensors, window)
        else:
            mask = pair_mask(pair_rows(packed), window)
            output, _ = sdpa_by_pair(Attention(), *tensors, mask, pair_spans=pair_spans(packed), scaling=None)
        loss = (output * weights).where(real, 0).sum()  # nothing reads the padding's outputs
        results.append((output.where(real, 0), *torch.autograd.grad(loss, tensors)))
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert (results[1][0] == 0).where(~real, True).all()


def test_a_pair_row_mask_is_the_pair_block_of_the_row_mask():
    packed = pack_pairs(PAIRS, pad_token_id=0, row_tokens=24)
    local, row_mask = pair_mask(pair_rows(packed), 4), pair_mask(packed, 4)
    for index, (row, start, length) in enumerate(pair_spans(packed)):
        block = row_mask[row, 0, start : start + length, start : start + length]
        assert torch.equal(local[index, 0, :length, :length], block)
        assert not row_mask[row, 0, start : start + length].sum() > block.sum()  # nothing outside its pair


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_switched_model_generates_and_saves_as_before(tmp_path, family):
    policy = build_policy(PolicySpec(config=dict(model_type=family, **TINY, **FAMILIES[family]))).eval()
    prompt = torch.tensor([[5, 9, 17, 4, 33]])
    before = policy.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    assert attend_by_pair(policy) and attention_backend(policy.config) == BY_PAIR
    after = policy.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    assert torch.equal(after, before)
    policy.save_pretrained(tmp_path)
    assert BY_PAIR not in (tmp_path / "config.json").read_text() and "attn" not in "".join(json.loads(
        (tmp_path / "config.json").read_text()))


def test_only_uncompiled_sdpa_models_are_switched():
    def policy(**extra):
        return build_policy(PolicySpec(config=dict(model_type="llama", **TINY), **extra))

    assert attend_by_pair(policy(lora=LoraSettings(r=4)))
    assert not attend_by_pair(policy(extra={"attn_implementation": "eager"}))
    compiled = policy()
    compile_decoder_layers(compiled)  # a loop over each batch's spans would recompile for every batch
    assert not attend_by_pair(compiled) and attention_backend(compiled.config) == "sdpa"


def test_one_row_drops_only_the_padding():
    packed = pack_pairs(PAIRS, pad_token_id=0, row_tokens=24)  # three rows, two of them padded at the end
    joined, real = one_row(packed), packed["pair_index"] >= 0
    assert len(packed["input_ids"]) == 3 and not real.all()
    assert joined["input_ids"].shape == (1, int(real.sum())) and (joined["pair_index"] >= 0).all()
    for name in ("input_ids", "position_ids", "part"):
        assert torch.equal(joined[name][0], packed[name][real])
    assert torch.equal(joined["input_ids"].flatten()[joined["grid"]], packed["input_ids"].flatten()[packed["grid"]])
    assert torch.equal(pair_mask(pair_rows(joined), 4), pair_mask(pair_rows(packed), 4))
