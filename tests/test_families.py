"""Every log-prob path reproduces ``log_softmax(model(**inputs).logits)`` in every verified family.

The families are the registry's (:mod:`lit_align.models.families`); a new one is an entry there and a row in
``tests/families.py``. Per family (tiny fp32 configs with each family's post-head transform switched on and a
large head), with and without a LoRA adapter (random ``lora_B`` once the references are taken, so the adapter
changes the output): the policy's response log-probs, each online reference's (FrozenCopy, DisabledAdapter), the
token-level KL, the offline store's columns (what ``lit-align precompute`` writes) and the SAE residual hook,
against a naive computation from the model's own forward; evaluation scoring in the families with a post-head
transform; the configure-time refusal of an unknown transform, and of the families refused by name.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import Tensor
from transformers import AutoTokenizer

from lit_align.eval.generation import score_responses
from lit_align.models import families, head
from lit_align.models.families import REFUSED
from lit_align.models.head import VERIFIED_MODEL_TYPES, check_output_head, hidden_through_forward
from lit_align.models.logprobs import sequence_logps
from lit_align.models.policy import PolicySpec, build_policy, final_hidden, lm_head, load_causal_lm
from lit_align.models.token_kl import sequence_logps_and_kl
from lit_align.reference import DisabledAdapter, FrozenCopy
from lit_align.reference.precompute import reference_columns
from lit_align.sae import residual_stream
from tests.families import (
    FAMILIES,
    MAMBA_FAMILIES,
    NOT_ONE_RESIDUAL,
    POST_HEAD_FAMILIES,
    build_family,
    family_batch,
)

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
CASES = [(family, lora) for family in FAMILIES for lora in (False, True)]
IDS = [f"{family}-{'lora' if lora else 'full'}" for family, lora in CASES]


def with_lora(model):
    """``model`` with a fresh LoRA adapter on every linear layer (``lora_B`` zero: no change yet); a Mamba layer's
    ``out_proj`` is left alone, as peft asks."""
    exclude = ["out_proj"] if model.config.model_type in MAMBA_FAMILIES else None
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", exclude_modules=exclude,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config).eval()


def move_away(policy) -> None:
    """Change the policy after its references were taken: random ``lora_B`` (the adapter is no longer a no-op),
    or noise on every weight without an adapter."""
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if not isinstance(policy, PeftModel):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
            elif "lora_B" in name:
                parameter.normal_(0.0, 0.3, generator=generator)


def policy_for(family: str, lora: bool):
    model = build_family(family)
    return with_lora(model) if lora else model


def attached(policy, lora: bool) -> list:
    """The online references of ``policy`` (a frozen copy, and the disabled adapter with LoRA), then
    :func:`move_away` the policy from them."""
    references = [FrozenCopy(), *([DisabledAdapter()] if lora else [])]
    for reference in references:
        reference.attach(policy)
    move_away(policy)
    return references


def naive_logprobs(model, batch: dict[str, Tensor]) -> Tensor:
    """``log_softmax(model(**inputs).logits)`` in float64, ``(batch, time - 1, vocab)``: position t predicts t + 1."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits[:, :-1].double().log_softmax(-1)


def naive_sequence_logps(logprobs: Tensor, batch: dict[str, Tensor]) -> Tensor:
    token = logprobs.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return (token * batch["response_mask"][:, 1:]).sum(-1)


def naive_seq_kl(policy_logprobs: Tensor, ref_logprobs: Tensor, batch: dict[str, Tensor]) -> Tensor:
    kl = (ref_logprobs.exp() * (ref_logprobs - policy_logprobs)).sum(-1)
    return (kl * batch["response_mask"][:, 1:]).sum(-1)


def close(got: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(got.double(), expected, **TOLERANCE)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_families_are_the_verified_ones_and_pass_the_configure_check(family):
    assert set(FAMILIES) == VERIFIED_MODEL_TYPES
    build_policy(PolicySpec(config={"model_type": family, **FAMILIES[family]}))  # runs check_output_head


@pytest.mark.parametrize("family", POST_HEAD_FAMILIES)
def test_the_bare_projection_is_wrong_in_post_head_families(family):
    """The old path (hidden states through ``get_output_embeddings()`` alone) fails these tests by far."""
    model, batch = build_family(family), family_batch()
    with torch.no_grad():
        old = sequence_logps(final_hidden(model, batch["input_ids"], batch["attention_mask"]),
                             model.get_output_embeddings(), batch["input_ids"], batch["response_mask"])
    assert (old.double() - naive_sequence_logps(naive_logprobs(model, batch), batch)).abs().max() > 1.0


@pytest.mark.parametrize(("family", "lora"), CASES, ids=IDS)
def test_policy_logps(family, lora):
    policy, batch = policy_for(family, lora), family_batch()
    move_away(policy)
    ids, mask = batch["input_ids"], batch["response_mask"]
    hidden = final_hidden(policy, ids, batch["attention_mask"])
    with torch.no_grad():  # a sharded model's final hidden states: its forward's last hidden_states entry
        torch.testing.assert_close(hidden_through_forward(policy, ids, batch["attention_mask"]), hidden.detach(),
                                   rtol=0, atol=0)
    logps = sequence_logps(hidden, lm_head(policy), ids, mask, chunk_size=3)  # checkpointed chunks
    close(logps.detach(), naive_sequence_logps(naive_logprobs(policy, batch), batch))
    logps.sum().backward()
    assert all(p.grad is None or p.grad.isfinite().all() for p in policy.parameters())


@pytest.mark.parametrize(("family", "lora"), CASES, ids=IDS)
def test_online_references_and_token_kl(family, lora):
    policy, batch = policy_for(family, lora), family_batch()
    expected_ref = naive_logprobs(policy, batch)
    references = attached(policy, lora)
    expected_policy = naive_logprobs(policy, batch)
    ids, mask = batch["input_ids"], batch["response_mask"]
    for reference in references:
        close(reference.sequence_logps(batch), naive_sequence_logps(expected_ref, batch))
        hidden = final_hidden(policy, ids, batch["attention_mask"])
        ref_hidden, ref_head = reference.final_hidden(batch)
        result = sequence_logps_and_kl(hidden, lm_head(policy), ref_hidden, ref_head, ids, mask, chunk_size=3)
        close(result.policy_logps.detach(), naive_sequence_logps(expected_policy, batch))
        close(result.ref_logps, naive_sequence_logps(expected_ref, batch))
        expected_kl = naive_seq_kl(expected_policy, expected_ref, batch)
        assert expected_kl.sum() > 1e-3  # far above the tolerance: a KL of zero would fail
        close(result.seq_kl.detach(), expected_kl)
        columns = reference_columns(reference, dict(batch, example_key=torch.tensor([7, 7])))  # the store's rows
        expected_store = naive_sequence_logps(expected_ref, batch)
        close(torch.stack([columns["chosen_logps"], columns["rejected_logps"]]).flatten(), expected_store)


@pytest.mark.parametrize(("family", "lora"), CASES, ids=IDS)
def test_sae_hook_captures_the_layer_output(family, lora):
    """The residual at layer 0 is ``output_hidden_states``' entry for it (index 1), on valid positions."""
    if family in NOT_ONE_RESIDUAL:
        pytest.skip(f"{family}: {NOT_ONE_RESIDUAL[family]}")
    policy, batch = policy_for(family, lora), family_batch()
    ids, attention_mask = batch["input_ids"], batch["attention_mask"]
    valid = attention_mask.bool()

    def expected(model) -> Tensor:
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[1]

    base = expected(policy)
    references = attached(policy, lora)
    with torch.no_grad():
        torch.testing.assert_close(residual_stream(policy, 0, ids, attention_mask)[valid], expected(policy)[valid])
    for reference in references:
        torch.testing.assert_close(reference.residual(batch, 0)[valid], base[valid])


@pytest.mark.parametrize("family", POST_HEAD_FAMILIES)
def test_evaluation_scoring(family, tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_family(family, vocab_size=len(tokenizer))
    prompts, responses = ["Question: how was it?", "Hi"], [" It was fine.", " there, friend"]
    expected = []
    for prompt, response in zip(prompts, responses, strict=True):
        ids = tokenizer(prompt + response)["input_ids"] + [tokenizer.eos_token_id]
        start = len(tokenizer(prompt)["input_ids"])
        with torch.no_grad():
            logprobs = model(input_ids=torch.tensor([ids])).logits[0].double().log_softmax(-1)
        expected.append(sum(logprobs[t - 1, ids[t]] for t in range(start, len(ids))))
    close(score_responses(model, tokenizer, prompts, responses), torch.stack(expected))


def without_entry(monkeypatch, family: str) -> None:
    """Drop ``family``'s registry entry, as for a family lit-align has no entry for."""
    monkeypatch.delitem(families.FAMILIES, family)
    monkeypatch.setattr(head, "VERIFIED_MODEL_TYPES", VERIFIED_MODEL_TYPES - {family})


def test_an_unknown_post_head_transform_is_refused_naming_the_family(monkeypatch):
    without_entry(monkeypatch, "vaultgemma")
    spec = PolicySpec(config={"model_type": "vaultgemma", **FAMILIES["vaultgemma"]})
    with pytest.raises(ValueError, match="model_type 'vaultgemma'.*does not reproduce"):
        build_policy(spec)


def test_on_the_meta_device_only_verified_families_pass(monkeypatch):
    without_entry(monkeypatch, "vaultgemma")
    with torch.device("meta"):
        check_output_head(build_family("gemma2", head_scale=1.0))
        unverified = load_causal_lm(PolicySpec(config={"model_type": "vaultgemma", **FAMILIES["vaultgemma"]}))
    with pytest.raises(ValueError, match="'vaultgemma' on the meta device"):
        check_output_head(unverified)


@pytest.mark.parametrize("family", sorted(REFUSED))
def test_a_refused_family_is_refused_by_name_before_any_forward(family):
    model = build_family("llama", head_scale=1.0)
    model.config.model_type = family  # only the name is read: the refusal comes before the probe forward
    with pytest.raises(ValueError, match=f"model_type '{family}' is refused: "):
        check_output_head(model)
