"""FPO inside AlignmentModule: response pooling, online references, the sparse store, setup errors."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_align.models.policy import LoraSettings, PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO, FPO, SFT, Mixture
from lit_align.reference import DisabledAdapter, FrozenCopy, OfflineStore
from lit_align.reference.precompute import feature_columns
from lit_align.reference.sparse import dense_rows, offsets_of, sparse_rows
from lit_align.reference.store import read_store, write_store
from lit_align.sae import SAEFeatures, SparseAutoencoder, save_saelens
from tests.test_module import make_data, make_trainer

LAYER, D_SAE, TOP_K = 0, 64, 16


def write_sae(path, d_model: int = 32, layer: int | None = LAYER, seed: int = 0) -> str:
    torch.manual_seed(seed)
    sae = SparseAutoencoder(d_model, D_SAE, activation="topk", k=8, apply_b_dec_to_input=True, layer=layer)
    return str(save_saelens(sae, path))


@pytest.fixture
def sae_dir(tmp_path) -> str:
    return write_sae(tmp_path / "sae")


def built(module: AlignmentModule, data=None) -> AlignmentModule:
    """Configure ``module`` outside a Trainer (the reference attached with ``data``, when given)."""
    module._trainer = None
    module.configure_model()
    if data is not None:
        module.reference.attach(module.policy, data)
        module.reference.attach_features(module.feature_extractor)
    return module


def perturb(module: AlignmentModule) -> None:
    """Move the policy away from its (already attached) reference, the same way every time."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.policy.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def test_features_are_pooled_over_response_tokens(tmp_path, model_dir, tokenizer_dir, explicit_file, sae_dir):
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    module = built(AlignmentModule(FPO(sae_dir, top_k=TOP_K), PolicySpec(path=model_dir)))
    inputs = module.preference_inputs(batch)
    padded = batch["attention_mask"].sum(-1) < batch["attention_mask"].shape[1]
    assert padded.any(), "the batch must hold right-padded rows, or dividing by the padded length would pass too"

    # oracle: hidden_states[layer + 1] is decoder layer `layer`'s output; mean of SAE(h_t) over response tokens
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        states = model(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        residual = states.hidden_states[LAYER + 1]
        sae = module.feature_extractor.sae
        expected = []
        for row in range(len(residual)):
            tokens = [t for t in range(residual.shape[1]) if batch["response_mask"][row, t]]
            expected.append(sum(sae.encode(residual[row, t]).double() for t in tokens) / len(tokens))
    got = torch.cat([inputs.policy_chosen_features, inputs.policy_rejected_features]).detach()
    torch.testing.assert_close(got.double(), torch.stack(expected), atol=1e-5, rtol=1e-5)
    assert got.requires_grad is False and inputs.policy_chosen_features.requires_grad
    # at step 0 the frozen copy is the policy: same features, D = 0, loss ln 2
    ref = torch.cat([inputs.ref_chosen_features, inputs.ref_rejected_features])
    torch.testing.assert_close(ref, got)
    torch.testing.assert_close(module(batch).losses, torch.full((len(batch["example_key"]),), math.log(2.0)))


def test_disabled_adapter_serves_the_base_features(model_dir, tokenizer_dir, explicit_file, sae_dir):
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    spec = PolicySpec(path=model_dir, lora=LoraSettings(r=4, alpha=8))
    lora = built(AlignmentModule(FPO(sae_dir, top_k=TOP_K), spec))
    assert isinstance(lora.reference, DisabledAdapter)
    with torch.no_grad():  # a non-zero adapter, so that policy and base differ
        for name, parameter in lora.policy.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.05)
    frozen = built(AlignmentModule(FPO(sae_dir, top_k=TOP_K), PolicySpec(path=model_dir), reference=FrozenCopy()))
    base = frozen.reference.sae_features(batch, frozen.feature_extractor)
    torch.testing.assert_close(lora.reference.sae_features(batch, lora.feature_extractor), base)
    inputs = lora.preference_inputs(batch)
    assert not torch.allclose(inputs.policy_chosen_features, inputs.ref_chosen_features)
    assert lora.policy.training, "the reference pass must restore the policy's training mode"


def test_sparse_store_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(0)
    pairs, width = 10, 300
    active = torch.rand(2 * pairs, width, generator=generator) < 0.05
    dense = torch.rand(2 * pairs, width, generator=generator) * active
    dense[3] = 0.0  # a response without active features
    keys = torch.arange(100, 100 + pairs)
    columns = {"example_key": keys, "chosen_logps": -torch.rand(pairs), "rejected_logps": -torch.rand(pairs),
               "chosen_lengths": torch.ones(pairs), "rejected_lengths": torch.ones(pairs), **feature_columns(dense)}
    # distributed predict pads with repeats: append pairs 2 and 0 again, in a different order than stored
    repeat = torch.tensor([2, 0])
    repeated = {name: torch.cat([value, value[repeat]]) for name, value in columns.items() if "feature" not in name}
    extra = feature_columns(torch.cat([dense[:pairs][repeat], dense[pairs:][repeat]]))
    repeated.update({name: torch.cat([columns[name], value]) for name, value in extra.items()})

    write_store(tmp_path / "store", repeated, {"reference": "r", "sae": {"weights": "w", "layer": 0, "d_sae": width}})

    stored, fingerprint = read_store(tmp_path / "store")
    assert fingerprint["sae"] == {"weights": "w", "layer": 0, "d_sae": width}
    assert stored["example_key"].tolist() == keys.tolist()
    for side, rows in (("chosen", dense[:pairs]), ("rejected", dense[pairs:])):
        offsets = stored[f"{side}_feature_offsets"]
        assert offsets.tolist() == offsets_of((rows != 0).sum(-1)).tolist()
        assert stored[f"{side}_feature_indices"].dtype == torch.int32
        everything = torch.arange(pairs)
        rebuilt = dense_rows(offsets, stored[f"{side}_feature_indices"], stored[f"{side}_feature_values"], everything,
                             width)
        torch.testing.assert_close(rebuilt, rows, rtol=0, atol=0)
        picked = torch.tensor([7, 3, 3, 0])
        torch.testing.assert_close(dense_rows(offsets, stored[f"{side}_feature_indices"],
                                              stored[f"{side}_feature_values"], picked, width), rows[picked])
    counts, indices, values = sparse_rows(dense)
    assert counts.sum() == len(indices) == len(values) == (dense != 0).sum() < dense.numel() / 10


def precompute_fpo(tmp_path, model_dir, tokenizer_dir, explicit_file, sae_dir):
    store = tmp_path / "store"
    module = AlignmentModule(FPO(sae_dir, top_k=TOP_K), PolicySpec(path=model_dir), reference=OfflineStore(str(store)))
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.25)
    make_trainer(tmp_path, 1).precompute(module, data)
    return store, data


def test_fpo_from_store_equals_online(tmp_path, model_dir, tokenizer_dir, explicit_file, sae_dir):
    store, data = precompute_fpo(tmp_path, model_dir, tokenizer_dir, explicit_file, sae_dir)
    columns, fingerprint = read_store(store)
    assert set(fingerprint["sae"]) == {"weights", "layer", "d_sae"} and fingerprint["sae"]["layer"] == LAYER
    assert {"chosen_feature_offsets", "rejected_feature_values"} <= set(columns)

    objective = partial(FPO, sae_dir, beta=0.5, alpha=2.0, top_k=TOP_K)
    offline = built(AlignmentModule(objective(), PolicySpec(path=model_dir), reference=OfflineStore(str(store))), data)
    online = built(AlignmentModule(objective(), PolicySpec(path=model_dir), reference=FrozenCopy()))
    perturb(offline)
    perturb(online)
    batch = next(iter(data.train_dataloader()))
    got, expected = offline.preference_inputs(batch), online.preference_inputs(batch)
    for name in ("ref_chosen_logps", "ref_rejected_logps", "ref_chosen_features", "ref_rejected_features"):
        torch.testing.assert_close(getattr(got, name), getattr(expected, name), atol=1e-5, rtol=1e-5)
    loss_offline, loss_online = offline.objective(got), online.objective(expected)
    torch.testing.assert_close(loss_offline.losses, loss_online.losses, atol=1e-5, rtol=0)
    assert (loss_online.metrics["feature_mse/rejected"] > 0).all(), "the perturbed policy must have drifted"
    assert not torch.allclose(loss_online.losses, torch.full_like(loss_online.losses, math.log(2.0)))


def test_training_from_store_loads_no_reference_model(tmp_path, model_dir, tokenizer_dir, explicit_file, sae_dir,
                                                      monkeypatch):
    store, data = precompute_fpo(tmp_path, model_dir, tokenizer_dir, explicit_file, sae_dir)
    monkeypatch.setattr(FrozenCopy, "attach", lambda *a, **k: pytest.fail("a reference model was built"))
    module = AlignmentModule(FPO(sae_dir, top_k=TOP_K), PolicySpec(path=model_dir),
                             reference=OfflineStore(str(store)), optimizer=partial(torch.optim.AdamW, lr=1e-2))
    make_trainer(tmp_path, 3, limit_val_batches=1).fit(module, data)
    assert not any(name.startswith(("objective", "feature_extractor")) for name in module.state_dict())
    assert not any(p.requires_grad for p in module.feature_extractor.sae.parameters())


def test_stores_without_or_with_other_features_are_refused(tmp_path, model_dir, tokenizer_dir, explicit_file, sae_dir):
    store, data = precompute_fpo(tmp_path, model_dir, tokenizer_dir, explicit_file, sae_dir)
    other_sae = write_sae(tmp_path / "other-sae", seed=5)
    module = AlignmentModule(FPO(other_sae, top_k=TOP_K), PolicySpec(path=model_dir),
                             reference=OfflineStore(str(store)))

    with pytest.raises(ValueError, match="another SAE: weights"):
        make_trainer(tmp_path, 1).fit(module, data)
    plain = tmp_path / "plain"
    dpo = AlignmentModule(FDPO(), PolicySpec(path=model_dir), reference=OfflineStore(str(plain)))
    make_trainer(tmp_path, 1).precompute(dpo, data)
    module = AlignmentModule(FPO(sae_dir, top_k=TOP_K), PolicySpec(path=model_dir), reference=OfflineStore(str(plain)))
    with pytest.raises(ValueError, match="holds no SAE features"):
        make_trainer(tmp_path, 1).fit(module, data)
    # a store with features still serves a plain DPO run
    dpo = AlignmentModule(FDPO(), PolicySpec(path=model_dir), reference=OfflineStore(str(store)))
    make_trainer(tmp_path, 1, limit_val_batches=0).fit(dpo, data)


@pytest.mark.parametrize(
    ("sae", "options", "match"),
    [
        ("narrow", {}, r"d_model=16 does not match the policy's hidden size 32"),
        ("default", {"top_k": D_SAE + 1}, rf"FPO top_k={D_SAE + 1} exceeds the width d_sae={D_SAE}"),
        ("default", {"layer": 1}, r"layer=1 but the SAE .* reads layer 0"),
        ("unlayered", {"layer": 2}, r"layer=2 does not exist: the policy has 2 decoder layers"),
        ("unlayered", {}, r"does not record its layer"),
    ],
)
def test_setup_errors_name_both_values(tmp_path, model_dir, sae, options, match):
    path = {
        "narrow": lambda: write_sae(tmp_path / "sae", d_model=16),
        "default": lambda: write_sae(tmp_path / "sae"),
        "unlayered": lambda: write_sae(tmp_path / "sae", layer=None),
    }[sae]()
    module = AlignmentModule(FPO(path, **{"top_k": TOP_K, **options}), PolicySpec(path=model_dir))
    with pytest.raises(ValueError, match=match):
        built(module)


def test_fpo_takes_the_extractor_as_an_argument(model_dir, sae_dir):
    features = SAEFeatures(sae_dir, layer=LAYER)
    module = built(AlignmentModule(FPO(features=features, top_k=TOP_K), PolicySpec(path=model_dir)))
    assert module.feature_extractor is features and features.d_sae == D_SAE
    with pytest.raises(ValueError, match="give one of sae_path"):
        FPO(sae_dir, features=features)
    with pytest.raises(ValueError, match="give one of sae_path"):
        FPO()


def test_mixture_with_fpo(model_dir, tokenizer_dir, explicit_file, sae_dir):
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    fpo = FPO(sae_dir, top_k=TOP_K)
    module = built(AlignmentModule(Mixture([fpo, SFT()], weights=[1.0, 0.2]), PolicySpec(path=model_dir)))
    assert module.feature_extractor is fpo.features
    output = module(batch)
    assert "fpo/feature_mse/chosen" in output.metrics and "loss/sft" in output.metrics
    output.loss.backward()
    with pytest.raises(ValueError, match="at most one objective that reads SAE features"):
        AlignmentModule(Mixture([FPO(sae_dir), FPO(sae_dir)]), PolicySpec(path=model_dir))
