"""The prompt-shared, padding-free layout: its rows and mask, and per-pair results equal to the padded layout's for
every objective, four model families, LoRA, each reference provider and the store's precompute."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.nn.attention.flex_attention import create_block_mask, create_mask, flex_attention

from lit_align.data.collator import PairCollator
from lit_align.data.packing import pack_pairs
from lit_align.models.layout import attention_backend, packing_obstacle, pair_mask, pair_rule
from lit_align.models.pair_attention import BY_PAIR
from lit_align.models.policy import LoraSettings, PolicySpec, build_policy
from lit_align.module import AlignmentModule
from lit_align.objectives import DPO, FDPO, FPO, SFT, TDPO, Mixture, PairwiseObjective, SimPO
from lit_align.objectives.shapes import LOSS_SHAPES
from lit_align.reference import DisabledAdapter, FrozenCopy
from tests.test_fpo_module import TOP_K, built, perturb, write_sae

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=128, max_position_embeddings=64)
FAMILIES = {
    "llama": {},
    "mistral": dict(sliding_window=4),
    "qwen2": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "gemma2": dict(sliding_window=4, head_dim=8, attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
}
"""Tiny configs whose sliding windows (4 positions) are shorter than the pairs, so the window matters."""
TOLERANCE = 1e-5


def random_pairs(lengths: list[tuple[int, int, int]], seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 120, (n,), generator=generator).tolist()

    return [dict(prompt_ids=ids(p), chosen_ids=ids(c), rejected_ids=ids(r), example_key=i)
            for i, (p, c, r) in enumerate(lengths)]


PAIRS = random_pairs([(7, 5, 9), (3, 11, 2), (12, 4, 6), (0, 3, 5)])
"""Unequal prompts and responses, one response of length 2 and one pair without prompt."""


def objectives(sae: str) -> list:
    """Every objective family: each f-divergence, each pairwise shape, SimPO, SFT, TDPO, FPO and a mixture."""
    shapes = [PairwiseObjective(name, label_smoothing=0.1 if shape.label_smoothing == "required" else 0.0)
              for name, shape in LOSS_SHAPES.items()]
    divergences = [FDPO(divergence=name) for name in ("reverse_kl", "forward_kl", "js", "alpha")]
    return [*shapes, *divergences, SimPO(), SFT(), TDPO(), FPO(sae, top_k=TOP_K), Mixture([DPO(), SFT()])]


def test_packed_row_positions_and_mask():
    pair = dict(prompt_ids=[10, 11], chosen_ids=[20, 21], rejected_ids=[30, 31], example_key=0)
    packed = pack_pairs([pair, dict(pair, prompt_ids=[12])], pad_token_id=0)
    assert packed["input_ids"].tolist() == [[10, 11, 20, 21, 30, 31, 12, 20, 21, 30, 31]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 2, 3, 0, 1, 2, 1, 2]]
    first_pair = pair_mask(packed)[0, 0, :6, :6].int().tolist()
    assert first_pair == [[1, 0, 0, 0, 0, 0],
                          [1, 1, 0, 0, 0, 0],
                          [1, 1, 1, 0, 0, 0],
                          [1, 1, 1, 1, 0, 0],
                          [1, 1, 0, 0, 1, 0],   # rejected: the prompt and itself, never the chosen
                          [1, 1, 0, 0, 1, 1]]
    assert not pair_mask(packed)[0, 0, 6:, :6].any()  # no attention between pairs
    windowed = pair_mask(packed, window=3)[0, 0, :6, :6].int().tolist()
    assert windowed[5] == [0, 1, 0, 0, 1, 1]  # position 3 sees positions 1-3: p1 is 4 indices but 2 positions back
    # the response grid: the last prompt token, then each response's tokens (chosen rows first)
    assert packed["grid"].tolist() == [[1, 2, 3], [6, 7, 8], [1, 4, 5], [6, 9, 10]]
    assert packed["response_ids"].tolist() == [[11, 20, 21], [12, 20, 21], [11, 30, 31], [12, 30, 31]]


def test_rows_are_balanced_and_padding_attends_only_to_padding():
    packed = pack_pairs(PAIRS, pad_token_id=0, row_tokens=24)  # 21 + 16 + 22 + 8 = 67 tokens: 3 rows
    assert packed["input_ids"].shape == (3, 24)
    assert sorted(packed["pair_index"].unique().tolist()) == [-1, 0, 1, 2, 3]
    mask, padding = pair_mask(packed)[:, 0], packed["pair_index"] == -1
    assert mask.diagonal(dim1=1, dim2=2).all()  # every query sees at least itself (no all-masked softmax rows)
    assert not (mask & (padding[:, :, None] != padding[:, None, :])).any()
    flat = packed["input_ids"].flatten()
    for row, pair in enumerate(PAIRS + PAIRS):
        response = pair["chosen_ids" if row < len(PAIRS) else "rejected_ids"]
        assert flat[packed["grid"][row][packed["response_mask"][row]]].tolist() == response


def test_flex_block_mask_is_the_sdpa_mask():
    packed = pack_pairs(PAIRS, pad_token_id=0, row_tokens=40)
    rows, length = packed["pair_index"].shape
    for window in (None, 4):
        rule, dense = pair_rule(packed, window), pair_mask(packed, window)
        assert torch.equal(create_mask(rule, rows, 1, length, length, device="cpu"), dense)
        shape = (3, rows, 2, length, 8)
        query, key, value = torch.randn(shape, generator=torch.Generator().manual_seed(0)).unbind(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # uncompiled FlexAttention (slow, exact) is fine for 67 tokens
            flex = flex_attention(query, key, value,
                                  block_mask=create_block_mask(rule, rows, None, length, length, device="cpu"))
        torch.testing.assert_close(flex, F.scaled_dot_product_attention(query, key, value, attn_mask=dense))


def _inputs(module: AlignmentModule, batch: dict, packing: bool):
    module.packing, module._packs = packing, {}
    inputs = module.preference_inputs(batch)
    assert list(module._packs.values()) == [packing]
    return inputs


def _assert_same_inputs(packed, padded) -> None:
    for name, value in vars(padded).items():
        other = getattr(packed, name)
        assert (value is None) == (other is None), name
        if value is not None:
            torch.testing.assert_close(other, value, rtol=0, atol=TOLERANCE, msg=name)


CASES = [(family, lora, None) for family in FAMILIES for lora in (False, True)] + [("mistral", False, "eager")]
"""Each family with and without LoRA on its default backend (SDPA, which the packed layout runs by pair; eager for
Gemma-2), and Mistral on eager."""


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_attention_backend_is_the_one_the_model_was_built_with(backend):
    """``attention_backend``, the one reader of transformers' private ``config._attn_implementation``."""
    policy = build_policy(PolicySpec(config=dict(model_type="llama", **TINY, **FAMILIES["llama"]),
                                     extra={"attn_implementation": backend}))
    assert attention_backend(policy.config) == backend
    assert packing_obstacle(policy) is None


@pytest.mark.parametrize(("family", "lora", "backend"), CASES)
def test_per_pair_results_equal_the_padded_layout(tmp_path, family, lora, backend):
    sae = write_sae(tmp_path / "sae")
    spec = PolicySpec(config=dict(model_type=family, **TINY, **FAMILIES[family]),
                      lora=LoraSettings(r=4) if lora else None,
                      extra={"attn_implementation": backend} if backend else {})
    module = built(AlignmentModule(Mixture([TDPO(), FPO(sae, top_k=TOP_K)]), spec))
    assert isinstance(module.reference, DisabledAdapter if lora else FrozenCopy)
    perturb(module)
    batch = PairCollator(pad_token_id=0, row_tokens=24 if lora else None)(PAIRS)  # 3 rows or 1
    packed = _inputs(module, batch, packing=True)
    assert attention_backend(module.policy.config) == (backend or ("eager" if family == "gemma2" else BY_PAIR))
    padded = _inputs(module, batch, packing=False)
    _assert_same_inputs(packed, padded)
    for objective in objectives(sae):  # relative: squared shapes (IPO, SPPO) reach losses of ~50 in fp32
        expected, got = objective(padded), objective(packed)
        for field in ("losses", "chosen_rewards", "rejected_rewards"):
            torch.testing.assert_close(getattr(got, field), getattr(expected, field), rtol=TOLERANCE, atol=TOLERANCE,
                                       msg=lambda text, o=objective, f=field: f"{o!r} {f}: {text}")


@pytest.mark.parametrize("family", ["gemma2", "llama"])  # eager attention on one row; SDPA by pair on three
def test_gradients_and_precompute_equal_the_padded_layout(tmp_path, family):
    sae = write_sae(tmp_path / "sae")
    spec = PolicySpec(config=dict(model_type=family, **TINY, **FAMILIES[family]))
    module = built(AlignmentModule(FPO(sae, top_k=TOP_K), spec))
    perturb(module)
    batch = PairCollator(pad_token_id=0, row_tokens=None if family == "gemma2" else 24)(PAIRS)
    gradients = []
    for packing in (True, False):
        module.policy.zero_grad()
        module.objective(_inputs(module, batch, packing)).loss.backward()
        gradients.append([p.grad.clone() for p in module.policy.parameters()])
    for packed, padded in zip(*gradients, strict=True):
        torch.testing.assert_close(packed, padded, rtol=0, atol=TOLERANCE)
    columns = []
    for packing in (True, False):
        module.packing, module._packs = packing, {}
        columns.append(module.predict_step(batch, 0))
    for name, value in columns[1].items():
        torch.testing.assert_close(columns[0][name], value, rtol=0, atol=TOLERANCE, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention runs compiled on GPU")
@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_flex_attention_equals_the_padded_layout_on_gpu(family):
    spec = PolicySpec(config=dict(model_type=family, **TINY, **FAMILIES[family]),
                      extra={"attn_implementation": "flex_attention"})
    module = built(AlignmentModule(TDPO(), spec)).cuda()
    perturb(module)
    batch = move_data_to_device(PairCollator(pad_token_id=0)(PAIRS), "cuda")
    _assert_same_inputs(_inputs(module, batch, packing=True), _inputs(module, batch, packing=False))


def test_an_unverified_family_runs_padded_and_says_so_once():
    spec = PolicySpec(config=dict(model_type="stablelm", **TINY))  # no registry entry: its head is checked, not packed
    module = built(AlignmentModule(DPO(), spec))
    batch = PairCollator(pad_token_id=0)(PAIRS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = module.preference_inputs(batch), module.preference_inputs(batch)
    said = [str(w.message) for w in caught if "padded layout" in str(w.message)]
    assert len(said) == 1 and "stablelm" in said[0]
    _assert_same_inputs(first, second)
    module.packing, module._packs = False, {}
    _assert_same_inputs(module.preference_inputs(batch), first)
