"""A sparse autoencoder over a language model's residual stream, in the convention shared by Gemma Scope
and SAELens.

With ``x`` a residual vector of width ``d_model`` and ``d_sae`` features (paper notation of Gemma Scope,
Lieberum et al. 2024, https://arxiv.org/abs/2408.05147, Eq. 1-3)

    pre(x) = (x - b_dec·[apply_b_dec_to_input]) W_enc + b_enc          W_enc: (d_model, d_sae)
    f(x)   = σ(pre(x))                                                  features, (d_sae,)
    x̂(f)   = f W_dec + b_dec                                            W_dec: (d_sae, d_model)

with the activation σ one of

    relu       σ(z)_i = max(z_i, 0)
    jumprelu   σ(z)_i = z_i · H(z_i - θ_i),  θ ≥ 0 a per-feature threshold (H the Heaviside step); Gemma Scope
    topk       σ(z)   = ReLU of the k largest z_i, zero elsewhere (Gao et al. 2024, https://arxiv.org/abs/2406.04093)

FPO (Yin et al. 2024, "Direct Preference Optimization Using Sparse Feature-Level Constraints",
https://arxiv.org/abs/2411.07618) reads ``f`` of a frozen SAE at one layer of policy and reference.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Activation = Literal["jumprelu", "topk", "relu"]
ACTIVATIONS: tuple[str, ...] = ("jumprelu", "topk", "relu")


class SparseAutoencoder(nn.Module):
    """Encoder ``x -> f``, decoder ``f -> x̂`` with a ReLU, JumpReLU or TopK activation.

    Args:
        d_model: width of the residual stream it reads (the policy's hidden size).
        d_sae: number of features.
        activation: ``"jumprelu"`` (per-feature threshold buffer ``threshold``), ``"topk"`` (needs ``k``) or
            ``"relu"``.
        k: active features per token for ``"topk"``, ``1 ≤ k ≤ d_sae``; must be ``None`` otherwise.
        apply_b_dec_to_input: subtract ``b_dec`` from the input before encoding (SAELens' default; Gemma
            Scope does not).
        layer: index of the decoder layer whose *output* the SAE reads (TransformerLens'
            ``blocks.{layer}.hook_resid_post``), when known; metadata only.

    Parameters ``W_enc (d_model, d_sae)``, ``b_enc (d_sae,)``, ``W_dec (d_sae, d_model)``, ``b_dec (d_model,)``
    are initialised with unit-norm decoder rows, ``W_enc = W_dec^T`` and zero biases. ``threshold (d_sae,)``
    is a buffer: the step function has no gradient, and only ``relu`` and ``topk`` SAEs are trained here.
    """

    threshold: Tensor

    def __init__(
        self,
        d_model: int,
        d_sae: int,
        activation: Activation = "topk",
        k: int | None = None,
        apply_b_dec_to_input: bool = False,
        layer: int | None = None,
    ) -> None:
        super().__init__()
        _check_config(d_model, d_sae, activation, k, layer)
        self.activation = activation
        self.k = k
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.layer = layer
        decoder = torch.nn.functional.normalize(torch.randn(d_sae, d_model), dim=-1)
        self.W_enc = nn.Parameter(decoder.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(decoder)
        self.b_dec = nn.Parameter(torch.zeros(d_model))
        if activation == "jumprelu":
            self.register_buffer("threshold", torch.zeros(d_sae))

    @property
    def d_model(self) -> int:
        """Width of the residual stream."""
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        """Number of features."""
        return self.W_enc.shape[1]

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction ``x̂(f(x))``, shape of ``x``."""
        return self.decode(self.encode(x))

    def pre_activations(self, x: Tensor) -> Tensor:
        """``pre(x)``, shape ``(..., d_sae)``; ``x`` is cast to the SAE's dtype."""
        if x.shape[-1] != self.d_model:
            raise ValueError(f"SAE input has width {x.shape[-1]}, the SAE expects d_model={self.d_model}")
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """Features ``f(x) = σ(pre(x))``, shape ``(..., d_sae)`` in the SAE's dtype."""
        pre = self.pre_activations(x)
        if self.activation == "relu":
            return torch.relu(pre)
        if self.activation == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))

    def decode(self, features: Tensor) -> Tensor:
        """Reconstruction ``x̂ = f W_dec + b_dec``, shape ``(..., d_model)``."""
        return features.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def extra_repr(self) -> str:
        k = f", k={self.k}" if self.k is not None else ""
        return f"d_model={self.d_model}, d_sae={self.d_sae}, activation={self.activation!r}{k}, layer={self.layer}"


def _check_config(d_model: int, d_sae: int, activation: str, k: int | None, layer: int | None) -> None:
    if d_model < 1 or d_sae < 1:
        raise ValueError(f"d_model and d_sae must be ≥ 1, got d_model={d_model}, d_sae={d_sae}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got activation={activation!r}")
    if activation == "topk" and (k is None or not 1 <= k <= d_sae):
        raise ValueError(f"activation='topk' needs 1 ≤ k ≤ d_sae={d_sae}, got k={k}")
    if activation != "topk" and k is not None:
        raise ValueError(f"k applies to activation='topk' only, got k={k} with activation={activation!r}")
    if layer is not None and layer < 0:
        raise ValueError(f"layer must be ≥ 0, got layer={layer}")


def check_sae_width(sae: SparseAutoencoder, hidden_size: int) -> None:
    """Refuse an SAE whose input width differs from the policy's hidden size, naming both sizes."""
    if sae.d_model != hidden_size:
        raise ValueError(
            f"SAE width d_model={sae.d_model} does not match the policy's hidden size {hidden_size}; "
            "use an SAE trained on this model's residual stream (tools/train_sae.py trains one)"
        )
