"""SimPO and the SFT term against naive float64 loops; the weighted Mixture and its parts' logged losses."""

from __future__ import annotations

import math
import random

import pytest
import torch
from jsonargparse import ArgumentParser

from lit_align.objectives import (
    SFT,
    TDPO,
    Mixture,
    Objective,
    ObjectiveOutput,
    PairwiseObjective,
    PreferenceInputs,
    SimPO,
)
from lit_align.objectives.functional import sft_loss, simpo_loss


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def random_inputs(
    seed: int, n: int = 12, *, with_reference: bool = True, grad: bool = False
) -> PreferenceInputs:
    rng = random.Random(seed)
    pc = torch.tensor([-rng.uniform(5, 60) for _ in range(n)], dtype=torch.float64, requires_grad=grad)
    pr = torch.tensor([-rng.uniform(5, 60) for _ in range(n)], dtype=torch.float64, requires_grad=grad)
    lc = torch.tensor([float(rng.randint(1, 40)) for _ in range(n)], dtype=torch.float64)
    lr = torch.tensor([float(rng.randint(1, 40)) for _ in range(n)], dtype=torch.float64)
    inputs = PreferenceInputs(pc, pr, lc, lr)
    if with_reference:
        inputs.ref_chosen_logps = pc.detach() + torch.randn(n, dtype=torch.float64, generator=_gen(seed))
        inputs.ref_rejected_logps = pr.detach() + torch.randn(
            n, dtype=torch.float64, generator=_gen(seed + 1)
        )
    return inputs


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- SimPO -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta,gamma,eps", [(2.0, 1.0, 0.0), (2.5, 1.4, 0.0), (10.0, 3.0, 0.1)])
def test_simpo_matches_naive_loop(beta, gamma, eps):
    inputs = random_inputs(3, with_reference=False)
    out = SimPO(beta=beta, gamma=gamma, label_smoothing=eps)(inputs)
    pc, pr = inputs.policy_chosen_logps.tolist(), inputs.policy_rejected_logps.tolist()
    lc, lr = inputs.chosen_lengths.tolist(), inputs.rejected_lengths.tolist()
    expected = []
    for i in range(len(pc)):
        z = beta / lc[i] * pc[i] - beta / lr[i] * pr[i] - gamma
        expected.append(-(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z))
    torch.testing.assert_close(
        out.losses, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(out.chosen_rewards, beta * inputs.policy_chosen_logps / inputs.chosen_lengths)


def test_simpo_hand_worked_value_and_needs_no_reference():
    # β/|y_w| log π(y_w) = 2 · (-2/2) = -2, β/|y_l| log π(y_l) = 2 · (-6/3) = -4: z = -2 + 4 - 1 = 1
    losses, chosen, rejected = simpo_loss(
        torch.tensor([-2.0]),
        torch.tensor([-6.0]),
        torch.tensor([2.0]),
        torch.tensor([3.0]),
        beta=2.0,
        gamma=1.0,
    )
    assert losses.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-7)
    assert (chosen.item(), rejected.item()) == (-2.0, -4.0)
    assert SimPO.needs == frozenset()
    out = SimPO()(random_inputs(0, with_reference=False, grad=True))  # no reference fields at all
    out.loss.backward()
    assert not out.chosen_rewards.requires_grad


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"beta": 0.0}, "beta must be > 0"),
        ({"gamma": -0.1}, "gamma must be >= 0"),
        ({"label_smoothing": 0.5}, "label"),
    ],
)
def test_simpo_refuses_out_of_range_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimPO(**kwargs)


# ---- SFT -------------------------------------------------------------------------------------------------


def test_sft_batch_normalisation_is_trl_mean_over_all_chosen_tokens():
    """TRL 1.16: ``-chosen_per_token_logps[mask].mean()`` over the batch, from sums and lengths only."""
    gen = _gen(5)
    lengths = torch.tensor([3, 7, 1, 12])
    mask = torch.arange(12)[None, :] < lengths[:, None]
    per_token = -torch.rand(4, 12, generator=gen, dtype=torch.float64) * 5 * mask
    trl_value = -per_token[mask].mean()
    summed = per_token.sum(dim=1)
    losses, _, _ = sft_loss(summed, summed, lengths.double(), lengths.double(), normalize="batch")
    torch.testing.assert_close(losses.mean(), trl_value)


def test_sft_sequence_normalisation_matches_naive_loop_and_rewards_are_token_means():
    inputs = random_inputs(8, with_reference=False)
    out = SFT(normalize="sequence")(inputs)
    pc, lc = inputs.policy_chosen_logps.tolist(), inputs.chosen_lengths.tolist()
    torch.testing.assert_close(
        out.losses, torch.tensor([-pc[i] / lc[i] for i in range(len(pc))], dtype=torch.float64)
    )
    torch.testing.assert_close(out.chosen_rewards, inputs.policy_chosen_logps / inputs.chosen_lengths)
    assert SFT.needs == frozenset()


def test_sft_refuses_unknown_normalisation():
    with pytest.raises(ValueError, match="unknown normalize 'tokens'"):
        SFT(normalize="tokens")


# ---- Mixture ---------------------------------------------------------------------------------------------


class _WithMetric(Objective):
    needs = frozenset()

    def forward(self, inputs: PreferenceInputs) -> ObjectiveOutput:
        losses = -inputs.policy_chosen_logps
        return ObjectiveOutput(losses, losses.detach(), losses.detach(), {"kl/chosen": losses.detach() * 2})


def test_dpo_plus_sft_sums_weighted_parts_and_logs_each_part():
    inputs = random_inputs(1, grad=True)
    dpo, sft = PairwiseObjective(), SFT()
    mix = Mixture([dpo, sft], weights=[1.0, 0.2])
    out = mix(inputs)
    dpo_out, sft_out = dpo(inputs), sft(inputs)
    torch.testing.assert_close(out.losses, dpo_out.losses + 0.2 * sft_out.losses)
    assert set(out.metrics) == {"loss/sigmoid", "loss/sft"}
    torch.testing.assert_close(out.metrics["loss/sigmoid"], dpo_out.losses.detach())
    torch.testing.assert_close(out.metrics["loss/sft"], sft_out.losses.detach())
    assert not any(m.requires_grad for m in out.metrics.values())
    torch.testing.assert_close(out.chosen_rewards, dpo_out.chosen_rewards)  # the first part's rewards
    torch.testing.assert_close(out.rejected_rewards, dpo_out.rejected_rewards)
    assert mix.needs == frozenset({"reference_logps"})
    # gradients of the mixture are the weighted gradients of the parts
    (grad_mix,) = torch.autograd.grad(out.loss, inputs.policy_chosen_logps)
    (grad_dpo,) = torch.autograd.grad(dpo(inputs).loss, inputs.policy_chosen_logps)
    (grad_sft,) = torch.autograd.grad(sft(inputs).loss, inputs.policy_chosen_logps)
    torch.testing.assert_close(grad_mix, grad_dpo + 0.2 * grad_sft)


def test_mpo_weights_and_default_weights():
    inputs = random_inputs(2)
    parts = [PairwiseObjective("sigmoid"), PairwiseObjective("bco_pair"), SFT()]
    mpo = Mixture(parts, weights=[0.8, 0.2, 1.0])(inputs)
    expected = sum(w * p(inputs).losses for w, p in zip([0.8, 0.2, 1.0], parts, strict=True))
    torch.testing.assert_close(mpo.losses, expected)
    assert Mixture(parts).weights == [1.0, 1.0, 1.0]


def test_repeated_names_get_suffixes_and_part_metrics_are_prefixed():
    inputs = random_inputs(4)
    out = Mixture([PairwiseObjective(), PairwiseObjective(beta=0.5), _WithMetric()])(inputs)
    assert set(out.metrics) == {"loss/sigmoid", "loss/sigmoid_2", "loss/_withmetric", "_withmetric/kl/chosen"}
    torch.testing.assert_close(out.metrics["_withmetric/kl/chosen"], -2 * inputs.policy_chosen_logps.detach())


def test_needs_is_the_union_and_a_reference_free_mixture_runs_without_reference():
    assert Mixture([SimPO(), SFT()]).needs == frozenset()
    assert Mixture([SFT(), TDPO()]).needs == TDPO.needs == {"reference_logps", "token_kl"}
    out = Mixture([SimPO(), SFT()], weights=[1.0, 0.5])(random_inputs(6, with_reference=False))
    assert torch.isfinite(out.losses).all()
    with pytest.raises(ValueError, match="missing inputs"):
        Mixture([SFT(), PairwiseObjective()])(random_inputs(6, with_reference=False))


@pytest.mark.parametrize(
    "objectives,weights,message",
    [
        ([], None, "at least one"),
        ([SFT()], [1.0, 2.0], "one weight per objective: got 2 weights for 1 objectives"),
        ([SFT(), SimPO()], [1.0, 0.0], "weights must all be > 0"),
    ],
)
def test_mixture_refuses_bad_configurations(objectives, weights, message):
    with pytest.raises(ValueError, match=message):
        Mixture(objectives, weights)


def test_mixture_from_yaml():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--objective", type=Objective)
    config = {
        "objective": {
            "class_path": "lit_align.objectives.Mixture",
            "init_args": {
                "objectives": [
                    {
                        "class_path": "lit_align.objectives.PairwiseObjective",
                        "init_args": {"shape": "robust"},
                    },
                    {"class_path": "lit_align.objectives.SFT"},
                ],
                "weights": [1.0, 0.2],
            },
        }
    }
    mix = parser.instantiate(parser.parse_object(config)).objective
    assert isinstance(mix, Mixture) and [type(o) for o in mix.objectives] == [PairwiseObjective, SFT]
    assert mix.objectives[0].shape == "robust" and mix.weights == [1.0, 0.2]
