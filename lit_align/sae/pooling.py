"""Response-pooled SAE features: the per-sequence vector FPO constrains, as :class:`~lit_align.sae.SAEFeatures` pools.

FPO's feature-level constraint (Yin et al. 2024, https://arxiv.org/abs/2411.07618, Sec. 3) compares
sequence-level sparse features of policy and reference. Here the sequence-level vector is the mean over the
response tokens:

    f̄(x, y) = (1/|y|) Σ_{t ∈ response} f(h_ℓ,t)

with ``h_ℓ,t`` the residual stream at layer ℓ *at the position of response token t* (the state that has read
token ``t``, not the one predicting it; ``response_mask`` as the collator builds it, EOS included), and
``|y|`` the number of response tokens — not the padded length. Rows without response tokens pool to zero.
Only response positions go through the SAE, so a long prompt costs nothing.

``pooling="padded_shifted"`` reproduces the FPO authors' released code instead (``fpo_get_batch_logps`` in
``feature_alignment/model/fpo.py`` of github.com/MikaStars39/FeatureAlignment): features at the positions that
*predict* the response tokens (``fm[:, :-1]`` masked by ``labels[:, 1:] != -100``), averaged over the whole
padded length ``T - 1`` of the batch (``.mean(dim=1)``), not over the response:

    f̄_authors(x, y) = (1/(T-1)) Σ_{t < T-1, y_{t+1} ∈ response} f(h_ℓ,t)

so its scale shrinks with the batch's padding (a row's value depends on the longest row it is batched with).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_align.sae.autoencoder import SparseAutoencoder

Pooling = Literal["response", "padded_shifted"]
"""``response``: the mean over the response tokens' own positions (default); ``padded_shifted``: the FPO
authors' sum over the positions predicting them, divided by the padded length ``T - 1``."""


def pooled_features(
    sae: SparseAutoencoder, residual: Tensor, response_mask: Tensor, pooling: Pooling = "response"
) -> Tensor:
    """Mean SAE features over each row's response tokens (or, ``padded_shifted``, as the FPO authors pool).

    Args:
        sae: the (usually frozen) sparse autoencoder.
        residual: ``(N, T, d_model)`` activations the SAE reads.
        response_mask: ``(N, T)`` bool, true on response tokens.
        pooling: see :data:`Pooling`.

    Returns:
        ``(N, d_sae)`` pooled features in the SAE's dtype; differentiable w.r.t. ``residual``.
    """
    if residual.shape[:2] != response_mask.shape:
        raise ValueError(
            f"residual {tuple(residual.shape)} and response_mask {tuple(response_mask.shape)} disagree on (N, T)"
        )
    if pooling not in ("response", "padded_shifted"):
        raise ValueError(f"pooling must be 'response' or 'padded_shifted', got pooling={pooling!r}")
    mask = response_mask.bool()
    if pooling == "padded_shifted":
        mask = torch.zeros_like(mask)
        mask[:, :-1] = response_mask[:, 1:].bool()
    rows, positions = mask.nonzero(as_tuple=True)
    features = sae.encode(residual[rows, positions])
    sums = features.new_zeros(residual.shape[0], sae.d_sae).index_add(0, rows, features)
    if pooling == "padded_shifted":
        return sums / max(residual.shape[1] - 1, 1)
    lengths = mask.sum(dim=1).clamp(min=1).to(sums.dtype)
    return sums / lengths.unsqueeze(1)
