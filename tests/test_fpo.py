"""FPO (Yin et al. 2024): the loss against a float64 oracle, top-k on the policy, the stop-gradient, the class."""

from __future__ import annotations

import math

import pytest
import torch
from jsonargparse import ArgumentParser

from lit_align.objectives import FPO, PreferenceInputs
from lit_align.objectives.fpo import topk_feature_mse
from lit_align.objectives.functional import fpo_loss


def naive_fpo(pc, pr, rc, rr, fpc, fpr, frc, frr, beta, alpha, top_k):
    """Straight from the paper, one pair at a time in Python floats, from mean log-probs:
    m(y) = mean log π_θ - mean log π_ref; D(y) = (1/k) Σ_{i ∈ TopK(c̄_θ)} (c̄_θ,i - c̄_ref,i)²;
    L = -log σ(β (m_w - m_l - α (D_l - D_w))) (the stop-gradient changes no value); rewards β m(y)."""

    def distance(policy, reference):
        top = sorted(range(len(policy)), key=lambda i: -policy[i])[:top_k]
        return sum((policy[i] - reference[i]) ** 2 for i in top) / top_k

    losses, chosen, rejected = [], [], []
    for i in range(len(pc)):
        m_w, m_l = pc[i] - rc[i], pr[i] - rr[i]
        d_w, d_l = distance(fpc[i].tolist(), frc[i].tolist()), distance(fpr[i].tolist(), frr[i].tolist())
        z = beta * (m_w - m_l - alpha * (d_l - d_w))
        losses.append(math.log(1.0 + math.exp(-z)))
        chosen.append(beta * m_w)
        rejected.append(beta * m_l)
    return [torch.tensor(values, dtype=torch.float64) for values in (losses, chosen, rejected)]


def random_inputs(seed: int, batch: int = 8, width: int = 40) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    means = [-3 * torch.rand(batch, generator=generator, dtype=torch.float64) for _ in range(4)]
    # sparse, non-negative pooled features, as an SAE gives them; continuous, so no ties in the top-k
    features = [
        torch.rand(batch, width, generator=generator, dtype=torch.float64)
        * (torch.rand(batch, width, generator=generator) < 0.5)
        for _ in range(4)
    ]
    return means + features


@pytest.mark.parametrize(("beta", "alpha", "top_k"), [(0.1, 0.5, 5), (2.0, 3.0, 1), (0.5, 0.0, 40), (1.0, 1.0, 12)])
def test_loss_matches_float64_oracle(beta, alpha, top_k):
    for seed in range(3):
        inputs = random_inputs(seed)
        got = fpo_loss(*inputs, beta=beta, alpha=alpha, top_k=top_k)
        expected = naive_fpo(*inputs, beta, alpha, top_k)
        for value, oracle in zip(got, expected, strict=True):
            torch.testing.assert_close(value, oracle, rtol=1e-12, atol=1e-12)


def test_hand_worked_case():
    # chosen: policy top-2 = features 0, 2 -> D_w = ((3-0)² + (2-1)²) / 2 = 5   (the reference's top-2 is 1, 3)
    # rejected: policy top-2 = features 3, 1 -> D_l = ((2-0)² + (1-0)²) / 2 = 2.5
    # m_w = -1 + 1.5 = 0.5, m_l = -2 + 1.5 = -0.5;  z = 0.1 (0.5 + 0.5 - 0.5 (2.5 - 5)) = 0.225
    t = lambda *values: torch.tensor([values], dtype=torch.float64)  # noqa: E731
    losses, chosen, rejected = fpo_loss(
        t(-1.0)[0], t(-2.0)[0], t(-1.5)[0], t(-1.5)[0],
        t(3.0, 0.0, 2.0, 0.0), t(0.0, 1.0, 0.0, 2.0), t(0.0, 5.0, 1.0, 4.0), t(0.0, 0.0, 0.0, 0.0),
        beta=0.1, alpha=0.5, top_k=2,
    )
    assert losses.item() == pytest.approx(math.log1p(math.exp(-0.225)), abs=1e-12)
    assert (chosen.item(), rejected.item()) == pytest.approx((0.05, -0.05), abs=1e-12)


def test_top_k_is_chosen_on_the_policy_not_the_reference():
    policy = torch.tensor([[0.9, 0.8, 0.1, 0.0]], dtype=torch.float64)
    reference = torch.tensor([[0.9, 0.0, 0.1, 2.0]], dtype=torch.float64)
    on_policy = ((0.9 - 0.9) ** 2 + (0.8 - 0.0) ** 2) / 2  # features 0, 1
    on_reference = ((0.0 - 2.0) ** 2 + (0.9 - 0.9) ** 2) / 2  # features 3, 0
    assert topk_feature_mse(policy, reference, 2).item() == pytest.approx(on_policy)
    assert on_policy != pytest.approx(on_reference)
    # and in the loss: swapping the reference's large feature into an unselected slot changes nothing
    zeros = torch.zeros(1, dtype=torch.float64)
    moved = torch.tensor([[0.9, 0.0, 5.0, 0.1]], dtype=torch.float64)  # feature 2 is not in the policy's top-2
    base = fpo_loss(zeros, zeros, zeros, zeros, policy, policy, policy, reference, beta=1.0, alpha=1.0, top_k=2)[0]
    other = fpo_loss(zeros, zeros, zeros, zeros, policy, policy, policy, moved, beta=1.0, alpha=1.0, top_k=2)[0]
    torch.testing.assert_close(base, other)


def test_stop_gradient_on_the_chosen_side():
    inputs = [x.clone().requires_grad_(True) for x in random_inputs(7, batch=4)]
    beta, alpha, top_k = 0.7, 2.0, 6
    losses, _, _ = fpo_loss(*inputs, beta=beta, alpha=alpha, top_k=top_k)
    losses.sum().backward()
    pc, pr, rc, rr, fpc, fpr, frc, frr = inputs
    assert fpc.grad is None, "the chosen response's feature distance must be under stop-gradient"

    # d L / d c̄_θ,l = β α σ(-z) · 2 (c̄_θ,l - c̄_ref,l) / k on the policy's top-k, 0 elsewhere
    with torch.no_grad():
        d_w = topk_feature_mse(fpc, frc, top_k)
        d_l = topk_feature_mse(fpr, frr, top_k)
        z = beta * ((pc - rc) - (pr - rr) - alpha * (d_l - d_w))
        top = fpr.topk(top_k, dim=-1).indices
        selected = torch.zeros_like(fpr).scatter(-1, top, 1.0)
        expected = (beta * alpha * torch.sigmoid(-z)).unsqueeze(-1) * 2 * (fpr - frr) / top_k * selected
    torch.testing.assert_close(fpr.grad, expected)
    torch.testing.assert_close(pc.grad, -beta * torch.sigmoid(-z))
    torch.testing.assert_close(pr.grad, beta * torch.sigmoid(-z))
    # the value still holds D(y_w): a larger chosen distance lowers the loss
    far = fpo_loss(*inputs[:4], fpc.detach() + 1.0, *inputs[5:], beta=beta, alpha=alpha, top_k=top_k)[0]
    assert torch.all(far < losses)


def test_top_k_wider_than_the_features_is_refused():
    inputs = random_inputs(0, width=8)
    with pytest.raises(ValueError, match=r"top_k=9 for d_sae=8"):
        fpo_loss(*inputs, beta=0.1, alpha=0.5, top_k=9)


def test_objective_divides_summed_logps_by_response_lengths():
    generator = torch.Generator().manual_seed(3)
    summed = [-40 * torch.rand(6, generator=generator) for _ in range(4)]
    lengths = [torch.randint(1, 30, (6,), generator=generator).float() for _ in range(2)]
    features = [torch.rand(6, 32, generator=generator) for _ in range(4)]
    inputs = PreferenceInputs(
        summed[0], summed[1], lengths[0], lengths[1], summed[2], summed[3],
        policy_chosen_features=features[0], policy_rejected_features=features[1],
        ref_chosen_features=features[2], ref_rejected_features=features[3],
    )
    output = FPO("unused", beta=0.3, alpha=0.5, top_k=10)(inputs)
    means = [summed[0] / lengths[0], summed[1] / lengths[1], summed[2] / lengths[0], summed[3] / lengths[1]]
    expected = fpo_loss(*means, *features, beta=0.3, alpha=0.5, top_k=10)
    torch.testing.assert_close(output.losses, expected[0])
    torch.testing.assert_close(output.chosen_rewards, expected[1])
    torch.testing.assert_close(output.metrics["feature_mse/chosen"], topk_feature_mse(features[0], features[2], 10))
    assert set(output.metrics) == {"feature_mse/chosen", "feature_mse/rejected", "feature_mse/margin"}
    with pytest.raises(ValueError, match="missing inputs"):
        FPO("unused")(PreferenceInputs(*summed[:2], *lengths, *summed[2:]))


def test_constructor_validation_and_cli_types():
    assert FPO.needs == {"reference_logps", "sae_features"}
    for bad, match in [({"beta": 0.0}, "beta"), ({"alpha": -1.0}, "alpha"), ({"top_k": 0}, "top_k"),
                       ({"layer": -1}, "layer")]:
        with pytest.raises(ValueError, match=match):
            FPO("sae", **bad)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(FPO, "fpo")
    config = parser.parse_args(["--fpo.sae_path", "runs/sae", "--fpo.top_k", "32"])
    assert (config.fpo.top_k, config.fpo.beta, config.fpo.alpha, config.fpo.layer) == (32, 0.1, 0.5, None)
    with pytest.raises(Exception, match="top_k"):
        parser.parse_args(["--fpo.sae_path", "x", "--fpo.top_k", "0"])
