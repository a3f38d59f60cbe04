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
gradients stay finite for log-ratios of ±1000.
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
        return (1.0 - capped_exp(-alpha * log_ratio)) / alpha
    raise ValueError(f"unknown divergence {divergence!r}; choose one of reverse_kl, forward_kl, js, alpha")
