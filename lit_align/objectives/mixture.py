"""A weighted mixture of objectives: ``L = Σ_k w_k L_k``, per pair.

Examples: DPO + 0.2 · SFT (RPO, Pang et al. 2024, https://arxiv.org/abs/2404.19733); MPO (Wang et al. 2024,
https://arxiv.org/abs/2411.10442): 0.8 · sigmoid + 0.2 · bco_pair + 1.0 · SFT, TRL's
``loss_type=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0]``.

The mixture needs the union of what its parts need, logs each part's unweighted per-pair loss as
``loss/<name>`` and each part's own metrics as ``<name>/<metric>``, and reports the first part's rewards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jsonargparse.typing import PositiveFloat

from lit_align.objectives.base import Need, Objective, ObjectiveOutput, PreferenceInputs

if TYPE_CHECKING:
    from lit_align.sae.features import SAEFeatures


class Mixture(Objective):
    """A weighted sum of objectives, evaluated on the same batch.

    Args:
        objectives: the parts, at least one; any objectives (pairwise shapes, SimPO, SFT, f-DPO, TDPO, ...).
        weights: one weight > 0 per part; all 1 when left out (as TRL's ``loss_weights``).

    The rewards (``rewards/*`` metrics, reward accuracy) are the first part's: put the preference loss first.
    A part is named by its ``name`` attribute (a pairwise objective by its shape) or else its lower-cased
    class name; a repeated name gets a suffix ``_2``, ``_3``, ...
    """

    def __init__(self, objectives: list[Objective], weights: list[PositiveFloat] | None = None) -> None:
        if not objectives:
            raise ValueError("objectives must hold at least one objective")
        weights = [1.0] * len(objectives) if weights is None else list(weights)
        if len(weights) != len(objectives):
            raise ValueError(
                f"weights must give one weight per objective: got {len(weights)} weights for "
                f"{len(objectives)} objectives"
            )
        if not all(w > 0 for w in weights):
            raise ValueError(f"weights must all be > 0, got weights={weights}")
        self.objectives = list(objectives)
        self.weights = weights
        self._names = _unique_names([getattr(o, "name", type(o).__name__.lower()) for o in objectives])

    @property
    def needs(self) -> frozenset[Need]:  # type: ignore[override]
        """The union of the parts' needs."""
        return frozenset().union(*(o.needs for o in self.objectives))

    def feature_extractor(self) -> SAEFeatures | None:
        """The extractor of the one part that reads SAE features (a batch carries one set of features)."""
        extractors = [part.feature_extractor() for part in self.objectives if "sae_features" in part.needs]
        if len(extractors) > 1:
            raise ValueError(
                f"Mixture must hold at most one objective that reads SAE features (a batch carries one set of "
                f"features), got {len(extractors)}"
            )
        return extractors[0] if extractors else None

    def forward(self, inputs: PreferenceInputs) -> ObjectiveOutput:
        outputs = [objective(inputs) for objective in self.objectives]
        losses = sum(w * out.losses for w, out in zip(self.weights, outputs, strict=True))
        metrics = {}
        for name, out in zip(self._names, outputs, strict=True):
            metrics[f"loss/{name}"] = out.losses.detach()
            metrics.update({f"{name}/{key}": value for key, value in out.metrics.items()})
        return ObjectiveOutput(losses, outputs[0].chosen_rewards, outputs[0].rejected_rewards, metrics)


def _unique_names(names: list[str]) -> list[str]:
    """Suffix repeated names with the first free occurrence number: ``[a, a, b] -> [a, a_2, b]``."""
    unique: list[str] = []
    for name in names:
        candidate, count = name, 1
        while candidate in unique:
            count += 1
            candidate = f"{name}_{count}"
        unique.append(candidate)
    return unique
