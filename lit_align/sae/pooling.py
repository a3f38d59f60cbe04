"""Response-pooled SAE features: the per-sequence feature vector FPO constrains.

FPO's feature-level constraint (Yin et al. 2024, https://arxiv.org/abs/2411.07618, Sec. 3) compares
sequence-level sparse features of policy and reference. Here the sequence-level vector is the mean over the
response tokens:

    f̄(x, y) = (1/|y|) Σ_{t ∈ response} f(h_ℓ,t)

with ``h_ℓ,t`` the residual stream at layer ℓ *at the position of response token t* (the state that has read
token ``t``, not the one predicting it; ``response_mask`` as the collator builds it, EOS included), and
``|y|`` the number of response tokens — not the padded length. Rows without response tokens pool to zero.
Only response positions go through the SAE, so a long prompt costs nothing.
"""

from __future__ import annotations

from torch import Tensor

from lit_align.sae.autoencoder import SparseAutoencoder


def pooled_features(sae: SparseAutoencoder, residual: Tensor, response_mask: Tensor) -> Tensor:
    """Mean SAE features over each row's response tokens.

    Args:
        sae: the (usually frozen) sparse autoencoder.
        residual: ``(N, T, d_model)`` residual activations at the SAE's layer.
        response_mask: ``(N, T)`` bool, true on response tokens.

    Returns:
        ``(N, d_sae)`` pooled features in the SAE's dtype; differentiable w.r.t. ``residual``.
    """
    if residual.shape[:2] != response_mask.shape:
        raise ValueError(
            f"residual {tuple(residual.shape)} and response_mask {tuple(response_mask.shape)} disagree on (N, T)"
        )
    rows, positions = response_mask.nonzero(as_tuple=True)
    features = sae.encode(residual[rows, positions])
    sums = features.new_zeros(residual.shape[0], sae.d_sae).index_add(0, rows, features)
    lengths = response_mask.sum(dim=1).clamp(min=1).to(sums.dtype)
    return sums / lengths.unsqueeze(1)
