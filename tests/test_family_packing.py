"""The packed layout in every family the registry packs, against each sequence run alone.

Per family (the tiny configs of ``tests/families.py``, with sliding windows of 4 positions where the family has
them, shorter than every pair, and Gemma-3 with one sliding and one global layer), on eager attention and SDPA
(where transformers gives the family SDPA), with and without a LoRA adapter (``lora_B`` random, so it changes the
output): three pairs of very different lengths share one packed row, and each response's summed log-probs through
:class:`~lit_align.module.AlignmentModule`'s packed path equal float64 ``log_softmax(model(prompt + response)
.logits)`` summed over the response, the sequence run alone, without padding or mask. The recurrent families say
why they run padded.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from peft import PeftModel

from lit_align.data.collator import PairCollator
from lit_align.models.families import FAMILIES as REGISTRY
from lit_align.models.families import packed_families
from lit_align.models.policy import LoraSettings, PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import SFT
from tests.families import FAMILIES, MAMBA_FAMILIES
from tests.test_fpo_module import built
from tests.test_packing import random_pairs

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
"""fp32 against float64: sums of up to 25 log-probs of a head scaled ×20 (about −100) carry ~1e-5 of rounding."""
WINDOWS = {
    "mistral": dict(sliding_window=4),
    "mixtral": dict(sliding_window=4),
    "phi3": dict(sliding_window=4),
    "qwen2": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "qwen3": dict(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "gemma2": dict(sliding_window=4),
    "gemma3_text": dict(layer_types=["sliding_attention", "full_attention"]),
}
"""Overrides that give the windowed families a window shorter than the pairs (the others have it already)."""
PAIRS = random_pairs([(3, 25, 2), (30, 2, 20), (6, 4, 3)], seed=3)
"""Prompts of 3, 30 and 6 tokens, responses of 25 and 2, 2 and 20: all in one row (positions up to 55 < 64)."""
PACKED = sorted(packed_families())
CASES = [(family, backend, lora) for family in PACKED for backend in ("eager", "sdpa") for lora in (False, True)]
IDS = [f"{family}-{backend}-{'lora' if lora else 'full'}" for family, backend, lora in CASES]


def module_for(family: str, backend: str, lora: bool) -> AlignmentModule:
    """An SFT module (policy log-probs only) on ``family``'s tiny model, head scaled ×20, ``lora_B`` random."""
    spec = PolicySpec(config=dict(model_type=family, **FAMILIES[family], **WINDOWS.get(family, {})),
                      lora=LoraSettings(r=4) if lora else None, extra={"attn_implementation": backend})
    module = built(AlignmentModule(SFT(), spec))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        module.policy.get_output_embeddings().weight.mul_(20.0)
        for name, parameter in module.policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.3, generator=generator)
    return module.eval()


def alone(model, prompt: list[int], response: list[int]) -> float:
    """Σ log π(response | prompt) from ``model(prompt + response).logits`` alone, in float64."""
    logits = model(input_ids=torch.tensor([prompt + response])).logits[0].double()
    predicted = logits[len(prompt) - 1 : -1].log_softmax(-1)
    return predicted.gather(-1, torch.tensor(response)[:, None]).sum().item()


@pytest.mark.parametrize(("family", "backend", "lora"), CASES, ids=IDS)
def test_packed_log_probs_equal_each_sequence_alone(family, backend, lora):
    try:
        module = module_for(family, backend, lora)
    except ValueError as error:
        if backend == "sdpa" and "scaled_dot_product_attention" in str(error):
            pytest.skip(f"transformers gives {family} no SDPA")
        raise
    assert isinstance(module.policy, PeftModel) == lora
    batch = PairCollator(pad_token_id=0)(PAIRS)
    assert batch["packed"]["input_ids"].shape[0] == 1  # the three pairs share one row
    with torch.no_grad():
        inputs = module.preference_inputs(batch)
        assert list(module._packs.values()) == [True]
        expected = [[alone(module.policy, pair["prompt_ids"], pair[name]) for pair in PAIRS]
                    for name in ("chosen_ids", "rejected_ids")]
    got = torch.stack([inputs.policy_chosen_logps, inputs.policy_rejected_logps]).double()
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), **TOLERANCE)


def test_every_family_packs_or_says_why_not():
    """Each verified family of ``tests/families.py`` packs, or its registry entry says in one line why not."""
    for family in FAMILIES:
        entry = REGISTRY[family]
        if family in MAMBA_FAMILIES or "recurrent" in entry.attention:
            assert entry.packed is None and entry.unpackable and "\n" not in entry.unpackable, family
        else:
            assert entry.packed is not None, family


@pytest.mark.parametrize("family", ["falcon_h1", "recurrent_gemma"])
def test_a_recurrent_family_runs_padded_and_says_why(family):
    module = built(AlignmentModule(SFT(), PolicySpec(config=dict(model_type=family, **FAMILIES[family]))))
    batch = PairCollator(pad_token_id=0)(PAIRS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module.preference_inputs(batch)
    said = [str(w.message) for w in caught if "padded layout" in str(w.message)]
    assert len(said) == 1 and REGISTRY[family].unpackable in said[0] and family in said[0]
    assert list(module._packs.values()) == [False]
