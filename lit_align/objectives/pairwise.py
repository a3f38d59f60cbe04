"""Pairwise preference objectives: an f-divergence transform, then a loss shape.

    s = f'(π_θ(y|x) / π_ref(y|x))            per response (Wang et al. 2023, https://arxiv.org/abs/2309.16240)
    L = shape(s_w, s_l, ...)                  per pair (:mod:`lit_align.objectives.shapes`)

With the reverse KL, ``s`` is the log-ratio ``r = log π_θ(y|x) - log π_ref(y|x)`` and ``shape="sigmoid"``
is DPO.
The derivatives are shifted so that ``f'(1) = 0``: every score is zero where the policy equals its reference,
TRL 1.16's convention. The shift changes nothing for shapes that read only the margin ``s_w - s_l``, but it
does for the length-normalised ones (IPO, ``sigmoid_norm``) and for the logged rewards ``β s``.
"""

from __future__ import annotations

from jsonargparse.typing import ClosedUnitInterval, OpenUnitInterval, PositiveFloat
from torch import Tensor

from lit_align.objectives.base import Need, Objective, ObjectiveOutput, PreferenceInputs, check_beta
from lit_align.objectives.divergences import Divergence, f_prime
from lit_align.objectives.ld_dpo import pair_desensitised_logps
from lit_align.objectives.shapes import LOSS_SHAPES, LabelSmoothing, Pair, ShapeName, ShapeParams
from lit_align.objectives.wpo import wpo_weights


def check_pairwise_options(
    shape: str, divergence: str, beta: float, alpha: float, label_smoothing: float, discopop_tau: float
) -> None:
    """Refuse an unknown shape or divergence, an out-of-range hyperparameter, a divergence the shape has no
    generalisation for, and a label smoothing the shape would ignore (or needs but did not get)."""
    if shape not in LOSS_SHAPES:
        raise ValueError(f"unknown loss shape {shape!r}; choose one of {sorted(LOSS_SHAPES)}")
    if divergence not in Divergence.__args__:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {Divergence.__args__}")
    check_beta(beta)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got alpha={alpha}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5), got label_smoothing={label_smoothing}")
    if not discopop_tau > 0:
        raise ValueError(f"discopop_tau must be > 0, got discopop_tau={discopop_tau}")
    spec = LOSS_SHAPES[shape]
    if divergence != "reverse_kl" and not spec.f_divergence:
        allowed = sorted(name for name, s in LOSS_SHAPES.items() if s.f_divergence)
        raise ValueError(
            f"loss shape {shape!r} has no f-divergence generalisation, so it cannot use "
            f"divergence={divergence!r}; use divergence='reverse_kl' with {shape!r}, or one of the shapes "
            f"{allowed} with {divergence!r}"
        )
    if spec.label_smoothing == "unused" and label_smoothing > 0:
        readers = sorted(name for name, s in LOSS_SHAPES.items() if s.label_smoothing != "unused")
        raise ValueError(
            f"loss shape {shape!r} does not use label_smoothing (got {label_smoothing}); set it to 0, or "
            f"pick one of the shapes that read it: {readers}"
        )
    if spec.label_smoothing == "required" and label_smoothing == 0:
        raise ValueError(f"loss shape {shape!r} needs label_smoothing > 0 (its paper suggests 1e-3)")


def check_reweighting(shape: str, ld_alpha: float | None, wpo: bool) -> None:
    """Refuse an LD-DPO α outside [0, 1], and WPO's per-pair weights on a shape whose i-th loss is not the i-th
    pair's (AOT sorts over the batch; TRL 1.16 refuses the same)."""
    if ld_alpha is not None and not 0 <= ld_alpha <= 1:
        raise ValueError(f"ld_alpha must lie in [0, 1], got ld_alpha={ld_alpha}")
    if wpo and shape in ("aot", "aot_unpaired"):
        raise ValueError(f"wpo weights each pair, but loss shape {shape!r} sorts over the batch: its i-th loss is "
                         "not the i-th pair's; use another shape, or wpo=False")


def pairwise_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    chosen_lengths: Tensor,
    rejected_lengths: Tensor,
    *,
    shape: ShapeName = "sigmoid",
    divergence: Divergence = "reverse_kl",
    beta: float = 0.1,
    alpha: float = 0.5,
    label_smoothing: float = 0.0,
    discopop_tau: float = 0.05,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair loss of a loss shape applied to f-divergence scores.

    Args:
        policy_chosen_logps: summed policy log-probs of the chosen responses. Shape ``(batch,)``.
        policy_rejected_logps: the same for the rejected responses. Shape ``(batch,)``.
        ref_chosen_logps: summed reference log-probs of the chosen responses. Shape ``(batch,)``.
        ref_rejected_logps: the same for the rejected responses. Shape ``(batch,)``.
        chosen_lengths: response tokens of each chosen response (≥ 1). Shape ``(batch,)``.
        rejected_lengths: the same for the rejected responses. Shape ``(batch,)``.
        shape: the loss shape, a key of :data:`lit_align.objectives.shapes.LOSS_SHAPES`.
        divergence: ``reverse_kl`` | ``forward_kl`` | ``js`` | ``alpha``; shapes without an f-divergence
            generalisation accept ``reverse_kl`` only.
        beta: strength β > 0 (IPO's τ); typically 0.01-0.5.
        alpha: α in (0, 1) of the α-divergence; ignored by the other divergences.
        label_smoothing: ε in [0, 0.5) for ``conservative``, ``robust``, ``aot``, ``aot_unpaired`` and
            ``exo_pair`` (which needs ε > 0); the other shapes refuse ε > 0.
        discopop_tau: DiscoPOP's temperature τ > 0; ignored by the other shapes.

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, each of shape ``(batch,)``; the rewards are ``β s``,
        detached.
    """
    check_pairwise_options(shape, divergence, beta, alpha, label_smoothing, discopop_tau)
    chosen = f_prime(policy_chosen_logps - ref_chosen_logps, divergence, alpha)
    rejected = f_prime(policy_rejected_logps - ref_rejected_logps, divergence, alpha)
    pair = Pair(
        chosen=chosen,
        rejected=rejected,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        policy_margin=policy_chosen_logps - policy_rejected_logps,
        reference_margin=ref_chosen_logps - ref_rejected_logps,
    )
    losses = LOSS_SHAPES[shape].loss(pair, ShapeParams(beta, label_smoothing, discopop_tau))
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


class PairwiseObjective(Objective):
    """A pairwise preference loss: any of the loss shapes of :mod:`lit_align.objectives.shapes` (DPO, cDPO,
    rDPO, SLiC hinge, IPO, EXO, NCA, BCO, SPPO, AOT, APO, DiscoPOP, length-normalised DPO) applied to f-DPO
    scores; ``PairwiseObjective()`` is DPO with β = 0.1.

    The scores generalise the log-ratio of DPO to an f-divergence constraint (Wang et al. 2023); shapes that
    read more than the chosen-minus-rejected margin accept the reverse KL only, and say so at construction.

    Args:
        shape: the loss shape's name (the table in ``docs/objectives.md``).
        divergence: ``reverse_kl`` (default) | ``forward_kl`` | ``js`` | ``alpha``.
        beta: strength β > 0; typically 0.1 (IPO's τ: 0.01-1).
        alpha: α in (0, 1) of the α-divergence (the f-DPO paper sweeps 0.3, 0.5, 0.7).
        label_smoothing: ε in [0, 0.5): the label-flip rate of ``conservative``, ``robust``, ``aot`` and
            ``aot_unpaired`` (rDPO suggests 0.1), EXO's ε (``exo_pair`` needs ε > 0; its paper suggests 1e-3).
        discopop_tau: DiscoPOP's temperature τ > 0; the paper uses 0.05.
        ld_alpha: LD-DPO's α in [0, 1] (:mod:`lit_align.objectives.ld_dpo`): the weight of the longer response's
            tokens past the pair's shared length, in policy and reference log-probs alike; unset: plain sums. Needs
            per-token log-probs (``token_logps``), so an online reference.
        wpo: multiply each pair's loss by WPO's weight (:mod:`lit_align.objectives.wpo`), the product of the
            policy's aligned, length-normalised probabilities of both responses (needs ``log_collision``).
    """

    def __init__(
        self,
        shape: ShapeName = "sigmoid",
        divergence: Divergence = "reverse_kl",
        beta: PositiveFloat = 0.1,
        alpha: OpenUnitInterval = 0.5,
        label_smoothing: LabelSmoothing = 0.0,
        discopop_tau: PositiveFloat = 0.05,
        ld_alpha: ClosedUnitInterval | None = None,
        wpo: bool = False,
    ) -> None:
        check_pairwise_options(shape, divergence, beta, alpha, label_smoothing, discopop_tau)
        check_reweighting(shape, ld_alpha, wpo)
        self.shape = shape
        self.divergence = divergence
        self.beta = beta
        self.alpha = alpha
        self.label_smoothing = label_smoothing
        self.discopop_tau = discopop_tau
        self.ld_alpha = ld_alpha
        self.wpo = wpo

    @property
    def needs(self) -> frozenset[Need]:  # type: ignore[override]
        """Reference log-probs; per-token log-probs for LD-DPO; the policy's log collision sums for WPO."""
        needs: set[Need] = {"reference_logps"}
        if self.ld_alpha is not None:
            needs.add("token_logps")
        if self.wpo:
            needs.add("log_collision")
        return frozenset(needs)

    @property
    def name(self) -> str:
        """The shape's name: the label of this part's loss in a mixture."""
        return self.shape

    def forward(self, inputs: PreferenceInputs) -> ObjectiveOutput:
        losses, chosen_rewards, rejected_rewards = pairwise_loss(
            *self._logps(inputs),
            inputs.chosen_lengths,
            inputs.rejected_lengths,
            shape=self.shape,
            divergence=self.divergence,
            beta=self.beta,
            alpha=self.alpha,
            label_smoothing=self.label_smoothing,
            discopop_tau=self.discopop_tau,
        )
        if not self.wpo:
            return ObjectiveOutput(losses, chosen_rewards, rejected_rewards)
        weights = wpo_weights(inputs.policy_chosen_logps, inputs.policy_rejected_logps, inputs.chosen_log_collision,
                              inputs.rejected_log_collision, inputs.chosen_lengths, inputs.rejected_lengths)
        return ObjectiveOutput(losses * weights, chosen_rewards, rejected_rewards, {"wpo/weight": weights})

    def _logps(self, inputs: PreferenceInputs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Policy chosen, policy rejected, reference chosen, reference rejected: summed, or LD-DPO's."""
        i = inputs
        if self.ld_alpha is None:
            return i.policy_chosen_logps, i.policy_rejected_logps, i.ref_chosen_logps, i.ref_rejected_logps
        lengths = (i.chosen_lengths, i.rejected_lengths, self.ld_alpha)
        return (*pair_desensitised_logps(i.policy_chosen_token_logps, i.policy_rejected_token_logps, *lengths),
                *pair_desensitised_logps(i.ref_chosen_token_logps, i.ref_rejected_token_logps, *lengths))
