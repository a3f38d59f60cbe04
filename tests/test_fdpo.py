"""f-DPO against a naive float64 implementation written from Wang et al. (2023), Eq. 12 and Table 1."""

from __future__ import annotations

import math

import pytest
import torch

from lit_align.objectives import DPO, FDPO, PairwiseObjective, PreferenceInputs
from lit_align.objectives.functional import fdpo_loss

DIVERGENCES = ["reverse_kl", "forward_kl", "js", "alpha"]


def naive_f_prime(u: float, divergence: str, alpha: float) -> float:
    """f'(u) straight from the paper's Table 1, in the probability ratio u (constants kept)."""
    if divergence == "reverse_kl":  # f(u) = u log u
        return math.log(u) + 1
    if divergence == "forward_kl":  # f(u) = -log u
        return -1 / u
    if divergence == "js":  # f(u) = u log u - (u + 1) log((u + 1) / 2)
        return math.log(2 * u / (1 + u))
    return (1 - u ** (-alpha)) / alpha  # α-divergence


def naive_loss(pc, pr, rc, rr, divergence, beta, alpha):
    losses = []
    for i in range(len(pc)):
        u_w = math.exp(pc[i] - rc[i])
        u_l = math.exp(pr[i] - rr[i])
        logit = beta * naive_f_prime(u_w, divergence, alpha) - beta * naive_f_prime(u_l, divergence, alpha)
        losses.append(-math.log(1 / (1 + math.exp(-logit))))
    return torch.tensor(losses, dtype=torch.float64)


def random_logps(n: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    policy = -torch.rand(2, n, generator=generator, dtype=torch.float64) * 40
    reference = policy + torch.randn(2, n, generator=generator, dtype=torch.float64) * 3
    return policy[0], policy[1], reference[0], reference[1]


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("beta,alpha", [(0.1, 0.5), (0.5, 0.3), (0.05, 0.7)])
def test_matches_naive_on_random_inputs(divergence, beta, alpha):
    pc, pr, rc, rr = random_logps()
    losses, chosen, rejected = fdpo_loss(pc, pr, rc, rr, divergence=divergence, beta=beta, alpha=alpha)
    expected = naive_loss(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), divergence, beta, alpha)
    torch.testing.assert_close(losses, expected, rtol=1e-10, atol=1e-12)
    # rewards are β f'(u) up to the constant dropped for reverse KL; their difference is exact
    naive_margin = torch.tensor([
        beta * (naive_f_prime(math.exp(a - c), divergence, alpha) - naive_f_prime(math.exp(b - d), divergence, alpha))
        for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), strict=True)
    ], dtype=torch.float64)
    torch.testing.assert_close(chosen - rejected, naive_margin, rtol=1e-10, atol=1e-12)
    assert not chosen.requires_grad and not rejected.requires_grad


def test_hand_worked_values():
    # log-ratios r_w = log 2, r_l = 0 (u_w = 2, u_l = 1), β = 1
    args = (torch.tensor([math.log(2.0)]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]))
    expected = {
        "reverse_kl": -math.log(1 / (1 + math.exp(-math.log(2.0)))),  # logit log 2 -> -log(2/3)
        "forward_kl": -math.log(1 / (1 + math.exp(-0.5))),  # -1/2 - (-1) = 1/2
        "js": -math.log(1 / (1 + math.exp(-math.log(4 / 3)))),  # log(4/3) - log(1)
        "alpha": -math.log(1 / (1 + math.exp(-2 * (1 - 2**-0.5)))),  # α = 0.5: (1 - 2^-½)/½ - 0
    }
    for divergence, value in expected.items():
        losses, _, _ = fdpo_loss(*args, divergence=divergence, beta=1.0, alpha=0.5)
        assert losses.item() == pytest.approx(value, rel=1e-6)
    assert expected["reverse_kl"] == pytest.approx(math.log(1.5))


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_gradients_match_naive_autograd(divergence):
    pc, pr, rc, rr = random_logps(8, seed=1)
    pc, pr = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    fdpo_loss(pc, pr, rc, rr, divergence=divergence, beta=0.2, alpha=0.4)[0].sum().backward()
    # naive: finite differences of the float64 oracle
    eps = 1e-6
    for tensor, index in ((pc, 0), (pr, 1)):
        base = [pc.detach().tolist(), pr.detach().tolist()]
        for i in range(len(tensor)):
            up = [list(base[0]), list(base[1])]
            down = [list(base[0]), list(base[1])]
            up[index][i] += eps
            down[index][i] -= eps
            numeric = (
                naive_loss(*up, rc.tolist(), rr.tolist(), divergence, 0.2, 0.4)[i]
                - naive_loss(*down, rc.tolist(), rr.tolist(), divergence, 0.2, 0.4)[i]
            ) / (2 * eps)
            assert tensor.grad[i].item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_finite_for_extreme_log_ratios(divergence, dtype):
    ratios = torch.tensor([1000.0, -1000.0, 0.0, 1000.0, -1000.0], dtype=dtype)
    policy_chosen = ratios.clone().requires_grad_()
    policy_rejected = torch.tensor([-1000.0, 1000.0, 0.0, 1000.0, -1000.0], dtype=dtype).requires_grad_()
    zeros = torch.zeros(5, dtype=dtype)
    losses, chosen, rejected = fdpo_loss(
        policy_chosen, policy_rejected, zeros, zeros, divergence=divergence, beta=0.1, alpha=0.5
    )
    losses.mean().backward()
    for tensor in (losses, chosen, rejected, policy_chosen.grad, policy_rejected.grad):
        assert torch.isfinite(tensor).all(), (divergence, dtype, tensor)
    assert losses[0] < losses[1]  # the pair ranked right has the smaller loss


def test_equal_policy_and_reference_gives_ln2():
    logps = torch.randn(4)
    for divergence in DIVERGENCES:
        losses, _, _ = fdpo_loss(logps, logps - 1, logps, logps - 1, divergence=divergence, beta=0.1)
        torch.testing.assert_close(losses, torch.full((4,), math.log(2.0)))


def test_alpha_limits():
    pc, pr, rc, rr = random_logps(6, seed=2)
    reverse, _, _ = fdpo_loss(pc, pr, rc, rr, divergence="reverse_kl", beta=0.1)
    near_zero, _, _ = fdpo_loss(pc, pr, rc, rr, divergence="alpha", beta=0.1, alpha=1e-7)
    torch.testing.assert_close(near_zero, reverse, rtol=1e-5, atol=1e-6)
    forward, _, _ = fdpo_loss(pc, pr, rc, rr, divergence="forward_kl", beta=0.1)
    one, _, _ = fdpo_loss(pc, pr, rc, rr, divergence="alpha", beta=0.1, alpha=1.0)
    torch.testing.assert_close(one, forward)


def test_objective_class_and_validation():
    pc, pr, rc, rr = random_logps(4)
    inputs = PreferenceInputs(pc, pr, torch.ones(4), torch.ones(4), rc, rr)
    output = FDPO("js", beta=0.3)(inputs)
    expected, _, _ = fdpo_loss(pc, pr, rc, rr, divergence="js", beta=0.3)
    torch.testing.assert_close(output.losses, expected)
    shape = PairwiseObjective("sigmoid", "js", beta=0.3)(inputs)  # the same loss through the loss-shape table
    torch.testing.assert_close(output.losses, shape.losses)
    torch.testing.assert_close(output.chosen_rewards, shape.chosen_rewards)
    torch.testing.assert_close(DPO(beta=0.3)(inputs).losses, fdpo_loss(pc, pr, rc, rr, divergence="reverse_kl",
                                                                        beta=0.3)[0])
    with pytest.raises(ValueError, match="alpha"):
        FDPO("alpha", alpha=1.5)
    with pytest.raises(ValueError, match="beta"):
        FDPO(beta=-0.1)
    with pytest.raises(ValueError, match="divergence"):
        FDPO("hellinger")
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        FDPO()(PreferenceInputs(pc, pr, torch.ones(4), torch.ones(4)))
