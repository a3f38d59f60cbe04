"""Loss shapes of pairwise preference optimisation: how a pair's scores become a loss.

A pairwise objective (:mod:`lit_align.objectives.pairwise`) turns each response's log-ratio
``r = log π_θ(y|x) - log π_ref(y|x)`` into a score ``s = f'(e^r) - f'(1)`` with the derivative of an
f-divergence (f-DPO; ``s = r`` under the reverse KL of plain DPO) and hands the pair to a *loss shape*:
a small pure function registered in :data:`LOSS_SHAPES` under its YAML name.

Notation: ``s_w``/``s_l`` the chosen/rejected scores, ``Δ = s_w - s_l`` the margin, ``ℓ`` a response's
length in tokens, ``β`` the strength, ``ε`` the label smoothing, ``σ`` the logistic function.

The formulas are those of TRL 1.16 (``DPOTrainer._compute_loss``), so a run switched from TRL gives the same
numbers; each docstring says where TRL departs from its paper.

Which shapes take an f-divergence: the f-DPO reparameterisation leaves a ``β log Z(x)`` term that cancels
only in the chosen-minus-rejected difference (Wang et al. 2023; TRL 1.16 says the same), so shapes reading
each response on its own (NCA, BCO, SPPO, APO) or sorting log-ratios across the batch (AOT) have no
f-divergence generalisation and accept the reverse KL only. IPO and the length-normalised sigmoid divide each
score by its length, where the term does not cancel exactly either; TRL 1.16 accepts them with any divergence
and so does lit-align.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_align.objectives.divergences import capped_exp
from lit_align.objectives.shape_types import (
    LOSS_SHAPES,
    LabelSmoothing,
    LossShape,
    Pair,
    ShapeName,
    ShapeParams,
    register,
)

__all__ = ["LOSS_SHAPES", "LabelSmoothing", "LossShape", "Pair", "ShapeName", "ShapeParams"]

def conservative_logistic(z: Tensor, label_smoothing: float) -> Tensor:
    """``-(1 - ε) log σ(z) - ε log σ(-z)``: the logistic loss when a label is flipped with probability ε."""
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


@register("sigmoid", f_divergence=True)
def sigmoid(pair: Pair, hp: ShapeParams) -> Tensor:
    """DPO (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290, Eq. 7): ``L = -log σ(β Δ)``.

    TRL 1.16's ``sigmoid`` ignores ``label_smoothing``; lit-align refuses it here (use ``conservative``).
    """
    return -F.logsigmoid(hp.beta * pair.margin)


@register("conservative", f_divergence=True, label_smoothing="optional")
def conservative(pair: Pair, hp: ShapeParams) -> Tensor:
    """Conservative DPO, cDPO (Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO",
    https://ericmitchell.ai/cdpo.pdf): ``L = -(1 - ε) log σ(β Δ) - ε log σ(-β Δ)``.

    This is TRL ≤ 0.28's ``sigmoid`` with ``label_smoothing = ε``; TRL 1.16 has no such loss type.
    """
    return conservative_logistic(hp.beta * pair.margin, hp.label_smoothing)


@register("robust", f_divergence=True, label_smoothing="optional")
def robust(pair: Pair, hp: ShapeParams) -> Tensor:
    """Robust DPO, rDPO (Chowdhury et al. 2024, "Provably Robust DPO", https://arxiv.org/abs/2403.00409):

    ``L = [-(1 - ε) log σ(β Δ) + ε log σ(-β Δ)] / (1 - 2ε)``, an unbiased estimate of the clean-label loss
    when labels are flipped with probability ε < 1/2 (the paper suggests ε = 0.1).
    """
    z = hp.beta * pair.margin
    eps = hp.label_smoothing
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


@register("hinge", f_divergence=True)
def hinge(pair: Pair, hp: ShapeParams) -> Tensor:
    """Hinge loss of SLiC (Zhao et al. 2023, "SLiC-HF", https://arxiv.org/abs/2305.10425) in the
    reference-normalised form of RSO (Liu et al. 2023, https://arxiv.org/abs/2309.06657):
    ``L = max(0, 1 - β Δ)``.

    SLiC-HF itself puts the margin on the policy's log-probabilities, without a reference; TRL uses RSO's
    form.
    """
    return torch.relu(1 - hp.beta * pair.margin)


@register("ipo", f_divergence=True)
def ipo(pair: Pair, hp: ShapeParams) -> Tensor:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    https://arxiv.org/abs/2310.12036, Eq. 17, with τ = β): ``L = (s_w/ℓ_w - s_l/ℓ_l - 1/(2β))²``.

    The per-token normalisation is not in the paper; TRL adds it and reports that the authors confirmed it is
    what their experiments used.
    """
    return (pair.length_normalised_margin - 1 / (2 * hp.beta)) ** 2


@register("exo_pair", f_divergence=True, label_smoothing="required")
def exo_pair(pair: Pair, hp: ShapeParams) -> Tensor:
    """EXO for pairs (Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment",
    https://arxiv.org/abs/2402.00856, Eq. 16): ``KL(q ‖ p)`` between ``q = (σ(βΔ), σ(-βΔ))`` and the smoothed
    labels ``p = (1 - ε, ε)``:

    ``L = σ(βΔ) [log σ(βΔ) - log(1 - ε)] + σ(-βΔ) [log σ(-βΔ) - log ε]``; ε > 0 (the paper suggests 1e-3).
    """
    z = hp.beta * pair.margin
    eps = hp.label_smoothing
    return torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - math.log(eps)
    )


@register("nca_pair", f_divergence=False)
def nca_pair(pair: Pair, hp: ShapeParams) -> Tensor:
    """NCA for pairs (Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit
    Rewards", https://arxiv.org/abs/2402.05369): ``L = -log σ(β r_w) - ½ log σ(-β r_w) - ½ log σ(-β r_l)``."""
    chosen, rejected = hp.beta * pair.chosen, hp.beta * pair.rejected
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)


@register("bco_pair", f_divergence=False)
def bco_pair(pair: Pair, hp: ShapeParams) -> Tensor:
    """BCO for pairs (Jung et al. 2024, "Binary Classifier Optimization for Large Language Model Alignment",
    https://arxiv.org/abs/2404.04656): ``L = -log σ(β r_w) - log σ(-β r_l)``.

    The paper shifts both rewards by δ, a running mean of the rewards; TRL ≤ 0.28 did too, TRL 1.16 does not,
    and neither does lit-align: the shape stays stateless (no buffer to checkpoint or synchronise).
    """
    return -F.logsigmoid(hp.beta * pair.chosen) - F.logsigmoid(-hp.beta * pair.rejected)


@register("sppo_hard", f_divergence=False)
def sppo_hard(pair: Pair, hp: ShapeParams) -> Tensor:
    """SPPO with hard labels (Wu et al. 2024, "Self-Play Preference Optimization for Language Model
    Alignment", https://arxiv.org/abs/2405.00675, Eq. 4.7 of Algorithm 1 with P = 1 for the winner and 0 for
    the loser):
    ``L = (r_w - 1/(2β))² + (r_l + 1/(2β))²``.

    The paper estimates soft win probabilities with a preference model; this is TRL's hard-label version.
    """
    return (pair.chosen - 0.5 / hp.beta) ** 2 + (pair.rejected + 0.5 / hp.beta) ** 2


@register("aot", f_divergence=False, label_smoothing="optional")
def aot(pair: Pair, hp: ShapeParams) -> Tensor:
    """AOT, paired (Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via Optimal Transport",
    https://arxiv.org/abs/2406.05882): with ``ρ = log π(y_w|x) - log π(y_l|x)`` and ``sort`` over the batch,
    ``δ_(i) = sort(ρ_θ)_i - sort(ρ_ref)_i`` and ``L_i = -(1 - ε) log σ(β δ_(i)) - ε log σ(-β δ_(i))``.

    The i-th loss belongs to the i-th order statistic, not to the i-th pair; the batch mean is what matters.
    """
    delta = torch.sort(pair.policy_margin).values - torch.sort(pair.reference_margin).values
    return conservative_logistic(hp.beta * delta, hp.label_smoothing)


@register("aot_unpaired", f_divergence=False, label_smoothing="optional")
def aot_unpaired(pair: Pair, hp: ShapeParams) -> Tensor:
    """AOT, unpaired (Melnyk et al. 2024, https://arxiv.org/abs/2406.05882): the chosen and rejected log-ratio
    distributions are compared quantile by quantile, ``δ_(i) = sort(r_w)_i - sort(r_l)_i``, then
    ``L_i = -(1 - ε) log σ(β δ_(i)) - ε log σ(-β δ_(i))``. Stateless: it sorts within the batch, as TRL."""
    delta = torch.sort(pair.chosen).values - torch.sort(pair.rejected).values
    return conservative_logistic(hp.beta * delta, hp.label_smoothing)


@register("apo_zero", f_divergence=False)
def apo_zero(pair: Pair, hp: ShapeParams) -> Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions",
    https://arxiv.org/abs/2408.06266, Eq. 7): ``L = 1 - σ(β r_w) + σ(β r_l)``; raises the chosen likelihood
    and lowers the rejected one, for chosen outputs better than the model's own."""
    return 1 - torch.sigmoid(hp.beta * pair.chosen) + torch.sigmoid(hp.beta * pair.rejected)


@register("apo_down", f_divergence=False)
def apo_down(pair: Pair, hp: ShapeParams) -> Tensor:
    """APO-down (D'Oosterlinck et al. 2024, https://arxiv.org/abs/2408.06266, Eq. 8):
    ``L = σ(β r_w) + 1 - σ(β (r_w - r_l))``; lowers both likelihoods, the rejected more, for chosen outputs
    worse than the model's own."""
    return torch.sigmoid(hp.beta * pair.chosen) + 1 - torch.sigmoid(hp.beta * pair.margin)


@register("discopop", f_divergence=True)
def discopop(pair: Pair, hp: ShapeParams) -> Tensor:
    """DiscoPOP, the log-ratio modulated loss (Lu et al. 2024, "Discovering Preference Optimization Algorithms
    with and for Large Language Models", https://arxiv.org/abs/2406.08414, Eq. 5): with ``z = β Δ`` and
    ``m = σ(z / τ)``, ``L = (1 - m) (-log σ(z)) + m e^{-z}``; the paper uses τ = 0.05.

    ``m e^{-z}`` is computed as ``exp(log σ(z/τ) - z)`` (capped), which equals TRL's product but stays finite
    where TRL's ``0 · ∞`` gives NaN (very negative margins).
    """
    z = hp.beta * pair.margin
    logistic = -F.logsigmoid(z)
    exponential = capped_exp(F.logsigmoid(z / hp.discopop_tau) - z)
    return torch.sigmoid(-z / hp.discopop_tau) * logistic + exponential


@register("sigmoid_norm", f_divergence=True)
def sigmoid_norm(pair: Pair, hp: ShapeParams) -> Tensor:
    """Length-normalised DPO: ``L = -log σ(β (s_w/ℓ_w - s_l/ℓ_l))``, TRL 1.16's ``sigmoid_norm``; the
    length-normalised DPO of Tülu 3 (Lambert et al. 2024, https://arxiv.org/abs/2411.15124) and of SimPO's
    analysis, with a reference (SimPO itself drops it: :mod:`lit_align.objectives.simpo`)."""
    return -F.logsigmoid(hp.beta * pair.length_normalised_margin)
