"""The f-DPO paper's calibration measure against a naive float64 transcription of the authors' ``cali_plot.py``
(numpy.digitize bins), merged states, bad input, and ``pair_statistics``' mean token log-probs against a naive
per-token sum, with and without the final EOS (``exclude_eos``, the authors' reading)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lit_align.eval import LikelihoodCalibrationError, PreferenceCalibrationError, pair_statistics
from lit_align.eval.likelihood_calibration import without_final_end_token
from lit_align.models.policy import PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import DPO
from tests.test_module import make_data


def authors_ece(chosen_mean: np.ndarray, rejected_mean: np.ndarray, num_bins: int = 10) -> float:
    """cali_plot.py of github.com/alecwangcq/f-divergence-dpo, written out: prob = exp(chosen_score /
    chosen_length), pred = per-token chosen > per-token rejected, answers all True."""
    prob = np.exp(chosen_mean)
    correct = chosen_mean > rejected_mean
    bin_indices = np.digitize(prob, np.linspace(0, 1, num_bins + 1))
    ece = 0.0
    for bin_idx in range(1, num_bins + 1):
        mask = bin_indices == bin_idx
        if np.any(mask):
            ece += abs(np.mean(correct[mask]) - np.mean(prob[mask])) * mask.sum()
    return ece / len(prob)


def test_matches_the_authors_computation_and_a_hand_worked_case():
    hand = LikelihoodCalibrationError()
    # confidences 0.75 (right), 0.75 (wrong), 0.15 (right): bins 7 and 1
    # ECE = (2·|1/2 - 3/4| + 1·|1 - 0.15|) / 3 = (0.5 + 0.85) / 3
    chosen = torch.tensor([math.log(0.75), math.log(0.75), math.log(0.15)], dtype=torch.float64)
    hand.update(chosen, chosen + torch.tensor([-1.0, 1.0, -0.5], dtype=torch.float64))
    assert float(hand.compute()) == pytest.approx(1.35 / 3, abs=1e-12)

    rng = np.random.default_rng(0)
    chosen = -rng.gamma(2.0, 0.8, size=700)
    rejected = chosen + rng.normal(-0.1, 0.5, size=700)
    metric, other = LikelihoodCalibrationError(), LikelihoodCalibrationError()
    metric.update(torch.from_numpy(chosen[:400]), torch.from_numpy(rejected[:400]))
    other.update(torch.from_numpy(chosen[400:]), torch.from_numpy(rejected[400:]))
    metric.merge_state(other)
    assert float(metric.compute()) == pytest.approx(authors_ece(chosen, rejected), abs=1e-12)
    # a different measure from the reward-margin ECE on the same numbers
    margin_ece = PreferenceCalibrationError()
    margin_ece.update(torch.from_numpy(chosen - rejected).float())
    assert float(margin_ece.compute()) != pytest.approx(float(metric.compute()), abs=1e-3)


def test_confidence_one_counts_in_n_but_in_no_bin_and_shapes_are_checked():
    metric = LikelihoodCalibrationError(n_bins=4)
    metric.update(torch.tensor([0.0, math.log(0.3)]), torch.tensor([-1.0, -2.0]))
    assert float(metric.compute()) == pytest.approx(authors_ece(np.array([0.0, math.log(0.3)]),
                                                                np.array([-1.0, -2.0]), 4))
    assert float(metric.compute()) == pytest.approx(0.7 / 2)
    with pytest.raises(ValueError, match="expected two"):
        metric.update(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="n_bins"):
        LikelihoodCalibrationError(n_bins=0)


def test_pair_statistics_mean_logps_match_naive(model_dir, tokenizer_dir, explicit_file):
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.5)
    data.setup("fit")
    module = AlignmentModule(DPO(beta=0.1), PolicySpec(path=model_dir))
    module.configure_model()
    batches = list(data.val_dataloader())
    stats = pair_statistics(module, batches)
    naive_chosen, naive_rejected = [], []
    with torch.no_grad():
        for batch in batches:
            logits = module.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            logp = torch.log_softmax(logits.double(), -1)[:, :-1].gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
            mask = batch["response_mask"][:, 1:].double()
            mean = (logp * mask).sum(-1) / mask.sum(-1)
            chosen, rejected = mean.chunk(2)
            naive_chosen.append(chosen)
            naive_rejected.append(rejected)
    torch.testing.assert_close(stats.chosen_mean_logps, torch.cat(naive_chosen), atol=1e-4, rtol=0)
    torch.testing.assert_close(stats.rejected_mean_logps, torch.cat(naive_rejected), atol=1e-4, rtol=0)


def test_without_final_end_token_drops_only_a_final_end_token():
    ids = torch.tensor([[5, 6, 7, 2, 0], [5, 6, 7, 8, 9], [5, 2, 7, 3, 0]])
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 1, 1, 1, 0]], dtype=torch.bool)
    kept = without_final_end_token(ids, mask, [2, 3])
    assert kept.tolist() == [[False, True, True, False, False],  # EOS at the end: dropped
                             [False, False, True, True, True],  # cut at max_length, no end token: kept
                             [False, True, True, False, False]]  # an end id inside the response stays


def test_pair_statistics_exclude_eos_is_the_authors_mean_without_the_end_token(model_dir, tokenizer_dir, explicit_file):
    """The f-DPO authors score prompt + response without EOS: with ``exclude_eos`` the mean token log-prob is a
    naive float64 mean over the response tokens but the final EOS; margins are the objective's either way."""
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.5)
    data.setup("fit")
    module = AlignmentModule(DPO(beta=0.1), PolicySpec(path=model_dir))
    module.configure_model()
    batches = list(data.val_dataloader())
    eos = data.tokenizer.eos_token_id
    assert module.policy.config.eos_token_id == eos  # the default end_ids below are the tokenizer's EOS
    default = pair_statistics(module, batches)
    authors = pair_statistics(module, batches, exclude_eos=True)
    explicit = pair_statistics(module, batches, exclude_eos=True, end_ids=[eos])
    naive = []
    with torch.no_grad():
        for batch in batches:
            ids, mask = batch["input_ids"], batch["response_mask"]
            logits = module.policy(input_ids=ids, attention_mask=batch["attention_mask"]).logits
            logp = torch.log_softmax(logits.double(), -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
            last = mask.long().cumsum(-1).eq(mask.long().sum(-1, keepdim=True)) & mask
            assert (ids[last] == eos).all()  # every response here ends in EOS
            kept = (mask & ~last)[:, 1:].double()
            naive.append((logp * kept).sum(-1) / kept.sum(-1))
    chosen = torch.cat([row.chunk(2)[0] for row in naive])
    rejected = torch.cat([row.chunk(2)[1] for row in naive])
    torch.testing.assert_close(authors.chosen_mean_logps, chosen, atol=1e-4, rtol=0)
    torch.testing.assert_close(authors.rejected_mean_logps, rejected, atol=1e-4, rtol=0)
    torch.testing.assert_close(explicit.chosen_mean_logps, authors.chosen_mean_logps)
    assert (authors.chosen_mean_logps - default.chosen_mean_logps).abs().max() > 1e-3  # the EOS term matters
    torch.testing.assert_close(authors.margins, default.margins)
    with pytest.raises(ValueError, match="end_ids"):
        pair_statistics(module, batches, exclude_eos=True, end_ids=[])
