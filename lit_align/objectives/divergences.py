"""The f-divergence derivatives f'(u) of f-DPO (Wang et al. 2023, "Beyond Reverse KL",
https://arxiv.org/abs/2309.16240, Table 1), written in the summed log-ratio ``r = log π_θ(y|x) - log π_ref(y|x)``
with ``u = exp(r)``:

    reverse KL   f(u) = u log u                              f'(u) = log u + 1        -> r
    forward KL   f(u) = -log u                               f'(u) = -1/u             -> 1 - exp(-r)
    JS           f(u) = u log u - (u+1) log((u+1)/2)          f'(u) = log(2u/(1+u))    -> log 2 - softplus(-r)
    α-divergence f(u) = (u^(1-α) - (1-α)u - α) / (α(α-1))     f'(u) = (1 - u^(-α)) / α -> (1 - exp(-α r)) / α

Additive constants cancel in every margin-based loss; they are chosen so that f'(1) = 0 (the reward is zero
where the policy equals its reference): reverse KL drops its "+1", so its rewards are DPO's ``β r``, and
forward KL adds 1, as TRL 1.16 writes it. α → 0 recovers reverse KL and α = 1 forward KL.
Exponentials are capped at the dtype's largest finite exponent (as TRL's ``cap_exp``), so values and
gradients stay finite for log-ratios of ±1000. The α-divergence's cap includes its ``1/α``: ``e^{-αr}/α`` stays
below the dtype's largest value (by a few roundings), so ``f'`` is exact wherever its exact value is finite in
the dtype (up to that margin) and about ``-finfo.max`` beyond; with β ≤ 1 the f-DPO margin and loss stay finite too.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Divergence = Literal["reverse_kl", "forward_kl", "js", "alpha"]


def capped_exp(x: Tensor) -> Tensor:
    """``exp(x)`` with ``x`` capped a little below the dtype's largest exponent, so the result and sums of
    two such results stay finite."""
    return torch.exp(x.clamp(max=math.log(torch.finfo(x.dtype).max) - 2.0))


def f_prime(log_ratio: Tensor, divergence: Divergence, alpha: float = 0.5) -> Tensor:
    """``f'(u)`` at ``u = exp(log_ratio)`` for the chosen divergence, shifted so that ``f'(1) = 0``."""
    if divergence == "reverse_kl":
        return log_ratio
    if divergence == "forward_kl":
        return 1.0 - capped_exp(-log_ratio)
    if divergence == "js":
        return math.log(2.0) - F.softplus(-log_ratio)
    if divergence == "alpha":
        return alpha_f_prime(log_ratio, alpha)
    raise ValueError(f"unknown divergence {divergence!r}; choose one of reverse_kl, forward_kl, js, alpha")


def alpha_f_prime(log_ratio: Tensor, alpha: float) -> Tensor:
    """``(1 - e^{-αr}) / α = -expm1(-αr) / α``, computed in at least fp32 with ``-αr`` capped a few roundings
    below ``log(α · finfo.max)`` of ``log_ratio``'s dtype, so the result in that dtype is at least ``-finfo.max``
    (a cap on ``-αr`` alone overflows for small α: ``e^{86} / 0.1 > 3.4e38``)."""
    work = torch.promote_types(log_ratio.dtype, torch.float32)
    limit = math.log(alpha * torch.finfo(log_ratio.dtype).max)
    cap = limit - 4 * (torch.finfo(log_ratio.dtype).eps + torch.finfo(work).eps * abs(limit))
    exponent = (-alpha * log_ratio.to(work)).clamp(max=cap)
    return (-torch.expm1(exponent) / alpha).to(log_ratio.dtype)
