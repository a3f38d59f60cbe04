"""The offline reference store: precompute through the predict loop, round trip, refusal, no reference model."""

from __future__ import annotations

import gc
from functools import partial

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from lit_align.models.policy import PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO
from lit_align.reference import FrozenCopy, OfflineStore
from lit_align.reference.fingerprint import weights_fingerprint
from lit_align.reference.store import read_store
from tests.test_module import make_data, make_trainer


def precompute(tmp_path, model_dir, tokenizer_dir, explicit_file):
    store = tmp_path / "store"
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir), reference=OfflineStore(str(store)))
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.25)
    make_trainer(tmp_path, 1).precompute(module, data)
    return store, data


def test_store_round_trip_matches_online_reference(tmp_path, model_dir, tokenizer_dir, explicit_file):
    store, data = precompute(tmp_path, model_dir, tokenizer_dir, explicit_file)
    columns, fingerprint = read_store(store)
    assert len(columns["example_key"]) == len(data.train_set) + len(data.val_set)
    assert set(fingerprint) == {"reference", "tokenizer", "lengths", "data"}

    offline = AlignmentModule(FDPO(), PolicySpec(path=model_dir), reference=OfflineStore(str(store)))
    online = AlignmentModule(FDPO(), PolicySpec(path=model_dir), reference=FrozenCopy())
    for module in (offline, online):
        module._trainer = None
        module.configure_model()
    offline.reference.attach(offline.policy, data)
    batch = next(iter(data.train_dataloader()))
    torch.testing.assert_close(offline.reference.sequence_logps(batch), online.reference.sequence_logps(batch))
    torch.testing.assert_close(offline(batch).losses, online(batch).losses)


def test_training_from_store_loads_no_reference_model(tmp_path, model_dir, tokenizer_dir, explicit_file, monkeypatch):
    store, _ = precompute(tmp_path, model_dir, tokenizer_dir, explicit_file)
    before = live_parameters()
    monkeypatch.setattr(FrozenCopy, "attach", lambda *a, **k: pytest.fail("a reference model was built"))
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir), reference=OfflineStore(str(store)),
                             optimizer=partial(torch.optim.AdamW, lr=1e-3))
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.25)
    make_trainer(tmp_path, 3, limit_val_batches=1).fit(module, data)
    # every model weight that appeared in memory is the policy's own: no reference weights
    assert live_parameters() - before == {id(p) for p in module.policy.parameters()}


def live_parameters() -> set[int]:
    gc.collect()
    return {id(p) for obj in gc.get_objects() if isinstance(obj, PreTrainedModel) for p in obj.parameters()}


def test_store_refused_for_another_model(tmp_path, model_dir, tokenizer_dir, explicit_file):
    store, data = precompute(tmp_path, model_dir, tokenizer_dir, explicit_file)
    torch.manual_seed(123)
    other = LlamaForCausalLM(LlamaConfig.from_pretrained(model_dir))
    other_dir = tmp_path / "other"
    other.save_pretrained(other_dir)
    module = AlignmentModule(FDPO(), PolicySpec(path=str(other_dir)), reference=OfflineStore(str(store)))
    trainer = make_trainer(tmp_path, 1)
    with pytest.raises(ValueError, match="another reference"):
        trainer.fit(module, make_data(explicit_file, tokenizer_dir, val_fraction=0.25))


def test_store_fingerprints_the_model_that_computed_it(tmp_path, model_dir, tokenizer_dir, explicit_file):
    torch.manual_seed(7)
    other = LlamaForCausalLM(LlamaConfig.from_pretrained(model_dir))
    other.save_pretrained(tmp_path / "other")
    store = tmp_path / "store"
    source = FrozenCopy(path=str(tmp_path / "other"))
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.25)
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir), reference=OfflineStore(str(store), source=source))
    make_trainer(tmp_path, 1).precompute(module, data)

    columns, fingerprint = read_store(store)
    policy = LlamaForCausalLM.from_pretrained(model_dir)
    assert fingerprint["reference"] == weights_fingerprint(other) != weights_fingerprint(policy)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    online = FrozenCopy(path=str(tmp_path / "other"))
    online.attach(policy)
    rows = [columns["example_key"].tolist().index(key) for key in batch["example_key"].tolist()]
    torch.testing.assert_close(torch.cat([columns["chosen_logps"][rows], columns["rejected_logps"][rows]]),
                               online.sequence_logps(batch))
    # training with the same source is served; a run whose reference is the policy itself is refused
    served = AlignmentModule(FDPO(), PolicySpec(path=model_dir),
                             reference=OfflineStore(str(store), source=FrozenCopy(path=str(tmp_path / "other"))))
    make_trainer(tmp_path, 1, limit_val_batches=0).fit(served, data)
    assert served.reference.source.model is None, "the source is fingerprinted on a copy, never attached"
    refused = AlignmentModule(FDPO(), PolicySpec(path=model_dir), reference=OfflineStore(str(store)))
    with pytest.raises(ValueError, match="another reference"):
        make_trainer(tmp_path, 1).fit(refused, data)


def test_store_refused_for_other_data_or_lengths(tmp_path, model_dir, tokenizer_dir, explicit_file):
    store, _ = precompute(tmp_path, model_dir, tokenizer_dir, explicit_file)
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir), reference=OfflineStore(str(store)))
    with pytest.raises(ValueError, match="another lengths"):
        data = make_data(explicit_file, tokenizer_dir, val_fraction=0.25)
        data.lengths = type(data.lengths)(max_length=48, max_prompt_length=32)
        make_trainer(tmp_path, 1).fit(module, data)
    extra = explicit_file.with_name("more.jsonl")
    extra.write_text(explicit_file.read_text().replace("Question", "Query"))
    module = AlignmentModule(FDPO(), PolicySpec(path=model_dir), reference=OfflineStore(str(store)))
    with pytest.raises(ValueError, match="not in the reference store"):
        make_trainer(tmp_path, 1).fit(module, make_data(extra, tokenizer_dir, val_fraction=0.25))


def test_truncated_store_is_a_clear_error(tmp_path, model_dir, tokenizer_dir, explicit_file):
    store, _ = precompute(tmp_path, model_dir, tokenizer_dir, explicit_file)
    file = store / "reference.safetensors"
    file.write_bytes(file.read_bytes()[:-50])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        read_store(store)
    with pytest.raises(FileNotFoundError, match="lit-align precompute"):
        read_store(tmp_path / "nowhere")


def test_token_level_objective_refuses_a_store():
    from lit_align.objectives import TDPO

    with pytest.raises(ValueError, match="full next-token distributions"):
        AlignmentModule(TDPO(), PolicySpec(path="unused"), reference=OfflineStore("unused"))
