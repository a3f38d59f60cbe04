"""FPO: Feature-level constrained Preference Optimization (Yin et al. 2024, "Direct Preference Optimization
Using Sparse Feature-Level Constraints", arXiv 2411.07618, https://arxiv.org/abs/2411.07618).

FPO keeps SimPO's length-normalised log-likelihood but measures it against an offline reference, and replaces
TDPO's token-level KL by a constraint in the feature space of a frozen sparse autoencoder (SAE) at one layer ℓ:

    m(y)  = (1/|y|) Σ_t log π_θ(y_t|x, y<t) - (1/|y|) Σ_t log π_ref(y_t|x, y<t)      length-normalised log-ratio
    c̄(y)  = (1/|y|) Σ_t SAE(h_ℓ,t)                                                  features pooled over y
    D(y)  = (1/k) Σ_{i ∈ TopK(c̄_θ(y))} (c̄_θ,i(y) - c̄_ref,i(y))²                    top-k chosen on the policy
    L     = -log σ( β (m(y_w) - m(y_l) - α (D(y_l) - sg(D(y_w)))) )

with ``sg`` the stop-gradient (as in TDPO2: the rejected response's feature drift is held down, the chosen
one's is not pulled up) and ``|y|`` the number of response tokens (not the padded length). Defaults as the
paper: β = 0.1, α = 0.5, k = 50. The reference side (mean log-probs and pooled features) does not change during
training, so it can come from the offline store (``lit-align precompute``): FPO then loads no reference model.

The logged rewards are ``β m(y)`` per response; the metrics ``feature_mse/chosen`` = D(y_w),
``feature_mse/rejected`` = D(y_l) and ``feature_mse/margin`` = their difference are reported per pair. With
``flipped_accuracy`` also ``rewards/accuracies_flipped`` (:func:`flipped_accuracy`), the accuracy the authors' code
logs, beside the correct ``rewards/accuracies`` = ``[r(y_w,i) > r(y_l,i)]``.

FPO holds only this math. Its features come from a :class:`~lit_align.sae.SAEFeatures` extractor (a frozen SAE at
one layer: loading, hooking and pooling live in :mod:`lit_align.sae`), which the module obtains through the
Objective contract (:meth:`FPO.feature_extractor`) without knowing it runs FPO.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch.nn.functional as F
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor

from lit_align.objectives.base import Need, Objective, ObjectiveOutput, PreferenceInputs, check_beta
from lit_align.sae.features import SAEFeatures

RewardLog = Literal["margin", "margin_plus_feature"]
"""The rewards FPO reports: ``β m(y)`` (default) or, as the authors' code logs them, ``β (m(y) + D(y))``."""


def topk_feature_mse(policy_features: Tensor, ref_features: Tensor, top_k: int, relative: bool = False) -> Tensor:
    """``D(y) = (1/k) Σ_{i ∈ TopK(c̄_θ(y))} (c̄_θ,i(y) - c̄_ref,i(y))²`` per response.

    ``relative=True`` divides by the reference's mean squared activation over the same features,
    ``D_rel(y) = D(y) / ((1/k) Σ_{i ∈ TopK} c̄_ref,i(y)² + 1e-8)`` (denominator detached): a drift measured in
    units of the features' own scale, so that one α means the same strength on models and SAEs whose feature
    magnitudes differ by orders of magnitude (see docs/fpo.md).

    Args:
        policy_features: pooled policy features ``c̄_θ``. Shape ``(batch, d_sae)``.
        ref_features: pooled reference features ``c̄_ref``. Shape ``(batch, d_sae)``.
        top_k: ``k``, the number of features compared: the ``k`` largest of the *policy's*, ``1 ≤ k ≤ d_sae``.
        relative: divide by the reference's mean squared activation of those features.

    Returns:
        ``(batch,)``; differentiable w.r.t. both feature tensors (the choice of features is not).
    """
    width = policy_features.shape[-1]
    if not 1 <= top_k <= width:
        raise ValueError(f"top_k must lie in [1, d_sae], got top_k={top_k} for d_sae={width}")
    indices = policy_features.detach().topk(top_k, dim=-1).indices
    reference = ref_features.gather(-1, indices)
    mse = (policy_features.gather(-1, indices) - reference).pow(2).mean(dim=-1)
    return mse / (reference.detach().pow(2).mean(dim=-1) + 1e-8) if relative else mse


def flipped_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """``[r(y_w,i) > r(y_l,B−1−i)]`` per pair of a batch of ``B``: the "accuracy calculated on unpaired examples"
    that the FPO authors' ``FPOModel.get_batch_metrics`` logs as ``rewards/accuracies``
    (``chosen_rewards > rejected_rewards.flip(dims=[0])``). Each chosen reward is compared with another pair's
    rejected reward, so it is not the preference accuracy (``[r(y_w,i) > r(y_l,i)]``) and it depends on the
    batch's order and size (a batch of one gives the correct value).

    Args:
        chosen_rewards: ``(batch,)``.
        rejected_rewards: ``(batch,)``.

    Returns:
        ``(batch,)`` float, 1 where the chosen reward exceeds the flipped rejected one.
    """
    return (chosen_rewards.detach() > rejected_rewards.detach().flip(dims=[0])).float()


def fpo_loss(
    policy_chosen_mean_logps: Tensor,
    policy_rejected_mean_logps: Tensor,
    ref_chosen_mean_logps: Tensor,
    ref_rejected_mean_logps: Tensor,
    policy_chosen_features: Tensor,
    policy_rejected_features: Tensor,
    ref_chosen_features: Tensor,
    ref_rejected_features: Tensor,
    *,
    beta: float,
    alpha: float,
    top_k: int,
    reward: RewardLog = "margin",
    relative: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """FPO loss per pair: ``-log σ(β (m(y_w) - m(y_l) - α (D(y_l) - sg(D(y_w)))))``, Yin et al. 2024.

    Args:
        policy_chosen_mean_logps: ``(1/|y_w|) log π_θ(y_w|x)``, mean policy log-prob per response token of the
            chosen responses. Shape ``(batch,)``.
        policy_rejected_mean_logps: the same for the rejected responses. Shape ``(batch,)``.
        ref_chosen_mean_logps: ``(1/|y_w|) log π_ref(y_w|x)``. Shape ``(batch,)``.
        ref_rejected_mean_logps: the same for the rejected responses. Shape ``(batch,)``.
        policy_chosen_features: SAE features of the policy, mean-pooled over the chosen response.
            Shape ``(batch, d_sae)``.
        policy_rejected_features: the same over the rejected response. Shape ``(batch, d_sae)``.
        ref_chosen_features: the reference's pooled SAE features of the chosen response. Shape ``(batch, d_sae)``.
        ref_rejected_features: the same for the rejected response. Shape ``(batch, d_sae)``.
        beta: reward scale β > 0; the paper uses 0.1.
        alpha: weight α ≥ 0 of the feature constraint; the paper uses 0.5 (0 drops the constraint).
        top_k: features compared per response, chosen on the policy, ``1 ≤ k ≤ d_sae``; the paper uses 50.
        reward: what the returned rewards are (the loss is the same): ``margin`` is ``β m(y)``;
            ``margin_plus_feature`` is ``β (m(y) + D(y))``, what the authors' code logs.
        relative: use ``D_rel`` (see :func:`topk_feature_mse`) instead of ``D``.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each ``(batch,)``; the rewards detached.
    """
    if reward not in ("margin", "margin_plus_feature"):
        raise ValueError(f"reward must be 'margin' or 'margin_plus_feature', got reward={reward!r}")
    chosen_margin = policy_chosen_mean_logps - ref_chosen_mean_logps
    rejected_margin = policy_rejected_mean_logps - ref_rejected_mean_logps
    chosen_mse = topk_feature_mse(policy_chosen_features, ref_chosen_features, top_k, relative)
    rejected_mse = topk_feature_mse(policy_rejected_features, ref_rejected_features, top_k, relative)
    constraint = alpha * (rejected_mse - chosen_mse.detach())
    losses = -F.logsigmoid(beta * (chosen_margin - rejected_margin - constraint))
    if reward == "margin_plus_feature":
        chosen_margin, rejected_margin = chosen_margin + chosen_mse, rejected_margin + rejected_mse
    return losses, beta * chosen_margin.detach(), beta * rejected_margin.detach()


class FPO(Objective):
    """Feature-level constrained Preference Optimization (Yin et al. 2024): SimPO's length-normalised margin
    against an (offline) reference, plus an MSE constraint on a frozen SAE's top-k features at one layer.

    Intuition from the paper: only a few dozen of an SAE's thousands of features are active at once, so
    constraining the policy's drift from the reference in that sparse feature space is as stabilising as
    TDPO's token-level KL at a fraction of the cost, and the reference's features can be computed once, offline.

    Needs the reference's log-probs and pooled SAE features: an online reference (FrozenCopy, DisabledAdapter)
    or an :class:`~lit_align.reference.OfflineStore` precomputed for the same SAE.

    Args:
        sae_path: shorthand for ``features=SAEFeatures(sae_path, layer)``: a SAELens folder or a Gemma Scope
            ``params.npz`` (see :class:`~lit_align.sae.SAEFeatures`).
        layer: the decoder layer the SAE reads (with ``sae_path``); unset takes the layer the SAE records.
        beta: reward scale β > 0; the paper uses 0.1.
        alpha: weight α ≥ 0 of the feature constraint; the paper uses 0.5.
        top_k: features compared per response, the policy's ``k`` largest; at most the SAE's width. Paper: 50.
        features: the feature extractor (give it, or ``sae_path``); where it reads and how it pools (the authors'
            ``site="final_norm"``, ``pooling="padded_shifted"``) are its own options.
        reward: the rewards reported, ``margin`` (``β m``) or ``margin_plus_feature`` (``β (m + D)``, the
            authors' code); the loss is the same.
        relative_mse: constrain ``D_rel``, the drift relative to the reference features' own scale, so that α
            carries across models and SAEs (see docs/fpo.md); off by default, as the paper.
        flipped_accuracy: also log ``rewards/accuracies_flipped`` (:func:`flipped_accuracy`), the accuracy the
            authors' code reports, beside the correct ``rewards/accuracies``.
    """

    needs: ClassVar[frozenset[Need]] = frozenset({"reference_logps", "sae_features"})

    def __init__(
        self,
        sae_path: str | None = None,
        layer: NonNegativeInt | None = None,
        beta: PositiveFloat = 0.1,
        alpha: NonNegativeFloat = 0.5,
        top_k: PositiveInt = 50,
        features: SAEFeatures | None = None,
        reward: RewardLog = "margin",
        relative_mse: bool = False,
        flipped_accuracy: bool = False,
    ) -> None:
        if (sae_path is None) == (features is None):
            raise ValueError("FPO reads the features of one SAE: give one of sae_path (with layer) and features")
        if features is not None and layer is not None:
            raise ValueError("FPO's layer goes with sae_path; with features, set the SAEFeatures' layer instead")
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got alpha={alpha}")
        if not top_k >= 1:
            raise ValueError(f"top_k must be >= 1, got top_k={top_k}")
        self.features = features if features is not None else SAEFeatures(sae_path, layer)
        self.features.require_width(top_k, "FPO top_k")
        self.beta = check_beta(beta)
        self.alpha = alpha
        self.top_k = top_k
        if reward not in ("margin", "margin_plus_feature"):
            raise ValueError(f"reward must be 'margin' or 'margin_plus_feature', got reward={reward!r}")
        self.reward = reward
        self.relative_mse = relative_mse
        self.flipped_accuracy = flipped_accuracy

    @property
    def name(self) -> str:
        """Label of this part's loss in a :class:`~lit_align.objectives.Mixture`."""
        return "fpo"

    def feature_extractor(self) -> SAEFeatures:
        """The extractor of the SAE features FPO constrains."""
        return self.features

    def forward(self, inputs: PreferenceInputs) -> ObjectiveOutput:
        chosen_lengths, rejected_lengths = inputs.chosen_lengths, inputs.rejected_lengths
        features = (
            inputs.policy_chosen_features,
            inputs.policy_rejected_features,
            inputs.ref_chosen_features,
            inputs.ref_rejected_features,
        )
        losses, chosen_rewards, rejected_rewards = fpo_loss(
            inputs.policy_chosen_logps / chosen_lengths,
            inputs.policy_rejected_logps / rejected_lengths,
            inputs.ref_chosen_logps / chosen_lengths,
            inputs.ref_rejected_logps / rejected_lengths,
            *features,
            beta=self.beta,
            alpha=self.alpha,
            top_k=self.top_k,
            reward=self.reward,
            relative=self.relative_mse,
        )
        policy_chosen, policy_rejected, ref_chosen, ref_rejected = (f.detach() for f in features)
        chosen_mse = topk_feature_mse(policy_chosen, ref_chosen, self.top_k, self.relative_mse)
        rejected_mse = topk_feature_mse(policy_rejected, ref_rejected, self.top_k, self.relative_mse)
        metrics = {
            "feature_mse/chosen": chosen_mse,
            "feature_mse/rejected": rejected_mse,
            "feature_mse/margin": chosen_mse - rejected_mse,
        }
        if self.flipped_accuracy:
            metrics["rewards/accuracies_flipped"] = flipped_accuracy(chosen_rewards, rejected_rewards)
        return ObjectiveOutput(losses, chosen_rewards, rejected_rewards, metrics)
