"""WPO and LD-DPO through :class:`~lit_align.module.AlignmentModule`: the per-token log-probs and log collision sums
it supplies against a naive float64 loop over a real tiny Llama's logits, packed equal to padded, real Trainer fits,
the providers' ``provides`` and refusals, and the YAML ``class_path`` selection."""

from __future__ import annotations

import math

import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback

from lit_align.data.collator import PairCollator
from lit_align.models.policy import LoraSettings, PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import DPO, Mixture, PairwiseObjective
from lit_align.objectives.functional import pairwise_loss
from lit_align.reference import DisabledAdapter, FrozenCopy, OfflineStore
from tests.test_fpo_module import built, perturb
from tests.test_module import LossRecorder, adam, make_data, make_trainer
from tests.test_packing import PAIRS, TINY, TOLERANCE, _assert_same_inputs, _inputs
from tests.test_wpo_lddpo import naive_ld

BOTH = dict(shape="sigmoid", divergence="js", beta=0.3, ld_alpha=0.4, wpo=True)


def naive_response(model, ids: list[int], response_mask: list[bool]) -> tuple[list[float], float]:
    """One sequence, unbatched, in float64: ``log π(y_t)`` of each response token the model predicts, and
    ``Σ_t log Σ_v π(v)²`` over them, a plain loop."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    token_logps, collision = [], 0.0
    for t in range(1, len(ids)):
        if response_mask[t]:
            probs = logits[t - 1].softmax(-1)
            token_logps.append(math.log(probs[ids[t]]))
            collision += math.log(float((probs**2).sum()))
    return token_logps, collision


def naive_inputs(module: AlignmentModule, batch: dict) -> tuple[list, list, list]:
    """Per row of the padded batch: the policy's and the reference's token log-probs and the policy's collision."""
    policy = module.policy.double()
    reference = module.reference
    policy_rows, ref_rows, collisions = [], [], []
    with torch.no_grad():
        for ids, attention, mask in zip(batch["input_ids"], batch["attention_mask"], batch["response_mask"],
                                        strict=True):
            ids, mask = ids[attention.bool()].tolist(), mask[attention.bool()].tolist()
            tokens, collision = naive_response(policy, ids, mask)
            policy_rows.append(tokens)
            collisions.append(collision)
            with reference.generation_model() as ref_model:
                ref_rows.append(naive_response(ref_model.double(), ids, mask)[0])
    module.policy.float()
    if isinstance(reference, FrozenCopy):
        reference.model.float()
    return policy_rows, ref_rows, collisions


def assert_rows(left_aligned: torch.Tensor, rows: list[list[float]]) -> None:
    for got, want in zip(left_aligned.double(), rows, strict=True):
        torch.testing.assert_close(got[: len(want)], torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-5)
        assert not got[len(want):].any()


@pytest.mark.parametrize("lora", [False, True])
def test_inputs_match_a_naive_loop_and_the_padded_layout(lora):
    spec = PolicySpec(config=dict(model_type="llama", **TINY), lora=LoraSettings(r=4) if lora else None)
    module = built(AlignmentModule(PairwiseObjective(**BOTH), spec))
    assert isinstance(module.reference, DisabledAdapter if lora else FrozenCopy)
    perturb(module)
    batch = PairCollator(pad_token_id=0, row_tokens=24)(PAIRS)  # 3 packed rows
    packed, padded = _inputs(module, batch, packing=True), _inputs(module, batch, packing=False)
    _assert_same_inputs(packed, padded)  # every field, the new ones included, to 1e-5
    policy_rows, ref_rows, collisions = naive_inputs(module, batch)
    n = len(PAIRS)
    for inputs in (packed, padded):
        assert_rows(torch.cat([inputs.policy_chosen_token_logps, inputs.policy_rejected_token_logps]), policy_rows)
        assert_rows(torch.cat([inputs.ref_chosen_token_logps, inputs.ref_rejected_token_logps]), ref_rows)
        got = torch.cat([inputs.chosen_log_collision, inputs.rejected_log_collision]).double()
        torch.testing.assert_close(got, torch.tensor(collisions, dtype=torch.float64), rtol=0, atol=1e-5)
        assert not inputs.chosen_log_collision.requires_grad and inputs.policy_chosen_token_logps.requires_grad
        # the loss from the naive rows: LD-DPO's sums (Eq. 12), the shape, WPO's weight (Eq. 3)
        lengths = [len(row) for row in policy_rows]
        shared = [min(lengths[i], lengths[n + i]) for i in range(n)]
        sums = [torch.tensor([naive_ld(rows[side * n + i], shared[i], 0.4) for i in range(n)], dtype=torch.float64)
                for rows in (policy_rows, ref_rows) for side in (0, 1)]
        counts = torch.tensor(lengths, dtype=torch.float64)
        want, _, _ = pairwise_loss(*sums, counts[:n], counts[n:], shape="sigmoid", divergence="js", beta=0.3)
        per_response = [(sum(policy_rows[r]) - collisions[r]) / lengths[r] for r in range(2 * n)]
        want = want * torch.tensor([math.exp(per_response[i] + per_response[n + i]) for i in range(n)])
        got = module.objective(inputs).losses.double()
        torch.testing.assert_close(got, want, rtol=TOLERANCE, atol=TOLERANCE)


class FirstSteps(Callback):
    """The logged metrics after each of the first steps."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        self.metrics.append({k: v.item() for k, v in trainer.callback_metrics.items()})


@pytest.fixture(scope="module")
def fits(tmp_path_factory, model_dir, tokenizer_dir) -> dict:
    """LD-DPO and WPO fitted 6 steps on the tiny Llama, packed and padded."""
    from tests.conftest import explicit_rows, write_jsonl

    root = tmp_path_factory.mktemp("fits")
    data_file = write_jsonl(root / "pairs.jsonl", explicit_rows())
    runs = {}
    for name, options in (("ld_dpo", dict(ld_alpha=0.5)), ("wpo", dict(wpo=True))):
        for packing in (True, False):
            torch.manual_seed(0)
            recorder, steps = LossRecorder(), FirstSteps()
            module = AlignmentModule(PairwiseObjective(beta=0.5, **options), PolicySpec(path=model_dir),
                                     optimizer=adam(3e-3), packing=packing)
            trainer = make_trainer(root / f"{name}-{packing}", 6, callbacks=[recorder, steps], limit_val_batches=0)
            trainer.fit(module, make_data(data_file, tokenizer_dir, val_fraction=0.0))
            runs[name, packing] = module, recorder.losses, steps.metrics
    return runs


@pytest.mark.parametrize("name", ["ld_dpo", "wpo"])
def test_fit_in_both_layouts(fits, name):
    (packed, packed_losses, metrics), (padded, padded_losses, _) = fits[name, True], fits[name, False]
    assert packed._runs_packed() and not padded._runs_packed()
    assert all(math.isfinite(loss) for loss in packed_losses + padded_losses) and len(packed_losses) == 6
    assert packed_losses[0] == pytest.approx(padded_losses[0], abs=TOLERANCE)  # the same weights at step 0
    assert packed_losses[-1] < packed_losses[0] and padded_losses[-1] < padded_losses[0]
    if name == "ld_dpo":  # the policy is its reference at step 0: −log σ(0)
        assert packed_losses[0] == pytest.approx(math.log(2.0), abs=1e-6)
    else:  # every pair's loss is ln 2 times its weight: the mean weight is the loss over ln 2
        assert packed_losses[0] == pytest.approx(math.log(2.0) * metrics[0]["train/wpo/weight_step"], rel=1e-5)
    batch = PairCollator(pad_token_id=0, row_tokens=24)(PAIRS)  # trained policy, initial reference: all differ
    trained = _inputs(packed, batch, packing=True), _inputs(packed, batch, packing=False)
    _assert_same_inputs(*trained)
    outputs = [packed.objective(inputs) for inputs in trained]
    for field in ("losses", "chosen_rewards", "rejected_rewards"):
        torch.testing.assert_close(getattr(outputs[0], field), getattr(outputs[1], field), rtol=TOLERANCE,
                                   atol=TOLERANCE)


def test_providers_and_refusals(model_dir):
    assert "token_logps" in FrozenCopy.provides and "token_logps" in DisabledAdapter.provides
    assert "log_collision" not in FrozenCopy.provides  # policy-side: the check never asks a reference for it
    store = OfflineStore("unused")
    AlignmentModule(PairwiseObjective(wpo=True), PolicySpec(path=model_dir), reference=store)  # accepted
    with pytest.raises(ValueError, match=r"OfflineStore cannot provide.*per-token log-probs") as refusal:
        AlignmentModule(PairwiseObjective(ld_alpha=0.5), PolicySpec(path=model_dir), reference=store)
    assert "\n" not in str(refusal.value)
    mixture = Mixture([DPO(), PairwiseObjective(ld_alpha=0.5, wpo=True)], [1.0, 0.5])
    module = built(AlignmentModule(mixture, PolicySpec(config=dict(model_type="llama", **TINY))))
    inputs = module.preference_inputs(PairCollator(pad_token_id=0)(PAIRS))  # the parts' needs, joined
    assert inputs.policy_chosen_token_logps is not None and inputs.chosen_log_collision is not None
    assert any(key.endswith("/wpo/weight") for key in mixture(inputs).metrics)


def test_selected_from_yaml(model_dir):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(AlignmentModule, "model")
    objective = {"class_path": "lit_align.objectives.PairwiseObjective",
                 "init_args": {"shape": "ipo", "divergence": "alpha", "alpha": 0.3, "ld_alpha": 0.5, "wpo": True}}
    config = parser.parse_object({"model": {"objective": objective, "policy": {"path": model_dir}}})
    module = parser.instantiate_classes(config).model
    assert (module.objective.ld_alpha, module.objective.wpo, module.objective.divergence) == (0.5, True, "alpha")
    assert module.objective.needs == {"reference_logps", "token_logps", "log_collision"}
    objective["init_args"]["ld_alpha"] = 1.5
    with pytest.raises(Exception, match="ld_alpha"):
        parser.parse_object({"model": {"objective": objective, "policy": {"path": model_dir}}})
