"""The α-divergence f'(r) = (1 - e^{-αr})/α stays finite for small α and |r| ≤ 1000, exact wherever it is finite.

Checked against float64 values of the equation, in fp32, for f' itself and for the f-DPO loss and its gradients.
"""

from __future__ import annotations

import math

import pytest
import torch

from lit_align.objectives.divergences import f_prime
from lit_align.objectives.functional import fdpo_loss

ALPHAS = [1e-3, 0.05, 0.07, 0.1, 0.3, 0.5, 0.9, 0.999]
FP32_MAX = torch.finfo(torch.float32).max
RATIOS = torch.cat([torch.linspace(-1000.0, 1000.0, 2001), torch.tensor([-1e-3, -1e-6, 0.0, 1e-6, 1e-3])])


def exact_f_prime(r: torch.Tensor, alpha: float) -> torch.Tensor:
    """The equation in float64 (infinite where even float64 overflows)."""
    return (1.0 - torch.exp(-alpha * r.double())) / alpha


@pytest.mark.parametrize("alpha", ALPHAS)
def test_f_prime_is_finite_and_exact_where_the_exact_value_is(alpha):
    got = f_prime(RATIOS, "alpha", alpha)
    assert got.dtype == torch.float32 and got.isfinite().all()
    exact = exact_f_prime(RATIOS, alpha)
    representable = exact.abs() <= FP32_MAX * (1 - 1e-4)
    assert (~representable).any() == (alpha * 1000 > math.log(alpha * FP32_MAX))  # the grid reaches overflow
    torch.testing.assert_close(got.double()[representable], exact[representable], rtol=2e-5, atol=1e-7)
    assert (got.double()[~representable] <= -FP32_MAX * (1 - 1e-4)).all()  # capped at about -max


def test_the_worst_case_of_the_issue_is_finite():
    """α = 0.1, r = -1000: e^{100}/0.1 overflows fp32 and capping e^{-αr} alone still overflowed (e^{86.7}/0.1)."""
    assert f_prime(torch.tensor([-1000.0]), "alpha", 0.1).isfinite().all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_f_prime_is_finite_in_other_dtypes(dtype):
    for alpha in ALPHAS:
        assert f_prime(RATIOS.to(dtype), "alpha", alpha).isfinite().all(), (dtype, alpha)


def exact_loss(r_w: torch.Tensor, r_l: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    margin = beta * (exact_f_prime(r_w, alpha) - exact_f_prime(r_l, alpha))
    return torch.nn.functional.softplus(-margin)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_fdpo_loss_and_gradients_are_finite_and_exact_where_finite(alpha, beta):
    grid = torch.tensor([-1000.0, -950.0, -700.0, -300.0, -50.0, -1.0, 0.0, 0.5, 20.0, 400.0, 1000.0])
    r_w, r_l = (side.reshape(-1) for side in torch.meshgrid(grid, grid, indexing="ij"))
    chosen, rejected = r_w.clone().requires_grad_(), r_l.clone().requires_grad_()
    zeros = torch.zeros_like(r_w)
    losses, _, _ = fdpo_loss(chosen, rejected, zeros, zeros, divergence="alpha", beta=beta, alpha=alpha)
    losses.sum().backward()
    for tensor in (losses, chosen.grad, rejected.grad):
        assert tensor.isfinite().all(), (alpha, beta)
    exact = exact_loss(r_w, r_l, alpha, beta)
    exact_sides = torch.stack([exact_f_prime(r_w, alpha), exact_f_prime(r_l, alpha)]).abs()
    representable = (exact_sides <= FP32_MAX * (1 - 1e-4)).all(0)
    torch.testing.assert_close(losses.double()[representable], exact[representable], rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(losses[r_w == r_l], torch.full_like(losses[r_w == r_l], math.log(2)))
