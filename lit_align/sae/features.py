"""SAE features of a policy's residual stream: the one home of loading, binding, encoding and pooling.

A :class:`SAEFeatures` is what an objective that reads ``sae_features`` (FPO) hands the module through
:meth:`Objective.feature_extractor <lit_align.objectives.base.Objective.feature_extractor>`: a frozen sparse
autoencoder at one decoder layer ℓ, and the map from residual activations to response-pooled features

    c̄(y) = (1/|y|) Σ_{t ∈ response} SAE(h_ℓ,t)            (:func:`~lit_align.sae.pooling.pooled_features`)

The module captures the policy's residual in its one forward (:meth:`SAEFeatures.capture`, gradients kept); a
reference provider computes its own (:meth:`OnlineReference.residual
<lit_align.reference.base.OnlineReference.residual>`) or reads them from the offline store.

Where the features are read and how they are pooled belong to the extractor: ``site="final_norm"`` reads the
final post-norm hidden state instead of the residual at layer ℓ, and ``pooling="padded_shifted"`` pools as the
FPO authors' released code does (:data:`~lit_align.sae.pooling.Pooling`); together they are the authors'
reading (docs/fpo.md). That pooling divides by the padded length, so it exists only in the padded layout: such an
extractor does not take packed batches (:attr:`SAEFeatures.packs`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Literal

from jsonargparse.typing import NonNegativeInt
from torch import Tensor, nn

from lit_align.paths import absolute_if_local, local_path
from lit_align.sae.autoencoder import SparseAutoencoder, check_sae_width
from lit_align.sae.hooks import ResidualCapture, decoder_layers
from lit_align.sae.loading import load_sae
from lit_align.sae.pooling import Pooling, pooled_features

Site = Literal["residual", "final_norm"]
"""Where the SAE reads: the residual stream at the output of decoder layer ℓ (default, what the SAE was trained
on), or the final post-norm hidden state (what the FPO authors' code feeds its last-layer SAE)."""


class SAEFeatures:
    """Response-pooled features of the frozen SAE at ``sae_path``, read at one decoder layer.

    The SAE is loaded, frozen, by :meth:`bind` (once the policy is built), moved to the activations' device
    when first used, never trained and never in a checkpoint (this is a plain object, not a module).

    Args:
        sae_path: a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``, as ``tools/train_sae.py``
            writes) or a Gemma Scope ``params.npz`` or its folder.
        layer: decoder layer whose output the SAE reads; unset takes the layer the SAE records. Must lie in
            ``[0, num_layers)`` and agree with the SAE's own, when it records one.
        site: ``residual`` (default) or ``final_norm``, the authors' code (see :data:`Site`).
        pooling: ``response`` (default, the mean over the response) or ``padded_shifted`` (the authors' code:
            the positions predicting the response, over the padded length); see :mod:`lit_align.sae.pooling`.
    """

    def __init__(
        self, sae_path: str, layer: NonNegativeInt | None = None, site: Site = "residual", pooling: Pooling = "response"
    ) -> None:
        if layer is not None and not layer >= 0:
            raise ValueError(f"layer must be >= 0, got layer={layer}")
        if site not in ("residual", "final_norm") or pooling not in ("response", "padded_shifted"):
            raise ValueError(f"site must be 'residual' or 'final_norm' and pooling 'response' or 'padded_shifted', "
                             f"got site={site!r}, pooling={pooling!r}")
        self.site = site
        self.pooling = pooling
        self.sae_path = absolute_if_local(sae_path)
        self.layer = layer
        self._sae: SparseAutoencoder | None = None
        self._layer: int | None = None
        self._least_width: tuple[int, str] = (1, "")

    def require_width(self, width: int, setting: str) -> None:
        """Have :meth:`bind` refuse an SAE with fewer than ``width`` features, naming ``setting`` (as "FPO top_k")
        — an objective's check, made when the SAE is read, before any training step."""
        self._least_width = (width, setting)

    def __repr__(self) -> str:
        return (f"SAEFeatures(sae_path={self.sae_path!r}, layer={self.layer!r}, site={self.site!r}, "
                f"pooling={self.pooling!r})")

    @property
    def packs(self) -> bool:
        """Whether the features can be read from packed batches (not with the padded-length pooling)."""
        return self.pooling != "padded_shifted"

    @property
    def sae(self) -> SparseAutoencoder:
        """The frozen SAE (after :meth:`bind`)."""
        if self._sae is None:
            raise RuntimeError(f"the SAE at {self.sae_path} is not loaded yet: call bind(policy) first")
        return self._sae

    @property
    def feature_layer(self) -> int:
        """The decoder layer whose output the SAE reads (after :meth:`bind`)."""
        if self._layer is None:
            raise RuntimeError(f"the SAE at {self.sae_path} is not loaded yet: call bind(policy) first")
        return self._layer

    @property
    def d_sae(self) -> int:
        """The number of features (after :meth:`bind`)."""
        return self.sae.d_sae

    def bind(self, policy: nn.Module) -> None:
        """Load the SAE, frozen, and check it against ``policy``: its width against the policy's hidden size,
        its layer against the policy's depth and against the layer it records."""
        sae = load_sae(local_path("model.objective.sae_path", self.sae_path)).requires_grad_(False).eval()
        layer = self.layer if self.layer is not None else sae.layer
        if layer is None:
            raise ValueError(f"the SAE at {self.sae_path} does not record its layer; set the features' layer")
        if sae.layer is not None and sae.layer != layer:
            raise ValueError(f"SAE features layer={layer} but the SAE at {self.sae_path} reads layer {sae.layer}")
        depth = len(decoder_layers(policy))
        if not layer < depth:
            raise ValueError(f"SAE features layer={layer} does not exist: the policy has {depth} decoder layers")
        check_sae_width(sae, policy.get_input_embeddings().embedding_dim)
        width, setting = self._least_width
        if width > sae.d_sae:
            raise ValueError(f"{setting}={width} exceeds the width d_sae={sae.d_sae} of the SAE at {self.sae_path}; "
                             f"set {setting.split()[-1]} ≤ {sae.d_sae}")
        self._sae, self._layer = sae, layer

    def capture(self, model: nn.Module) -> AbstractContextManager[ResidualCapture | None]:
        """A context capturing ``model``'s residual stream at the SAE's layer during a forward (gradients kept);
        nothing to capture at the ``final_norm`` site, which is the forward's own output."""
        return nullcontext() if self.site == "final_norm" else ResidualCapture(model, self.feature_layer)

    def read(self, capture: ResidualCapture | None, hidden: Tensor) -> Tensor:
        """The states the SAE reads after a forward under :meth:`capture` that gave the final ``hidden``."""
        return hidden if capture is None else capture.activations

    def reference_states(self, reference, batch: dict[str, Tensor]) -> Tensor:
        """The states the SAE reads of an online ``reference`` (no grad): its final hidden states at the
        ``final_norm`` site, else its residual at the SAE's layer (only layers ``0..ℓ`` run)."""
        if self.site == "final_norm":
            return reference.final_hidden(batch)[0]
        return reference.residual(batch, self.feature_layer)

    def encode(self, residual: Tensor, response_mask: Tensor) -> Tensor:
        """SAE features of ``residual`` ``(N, T, d_model)`` pooled over each row's response tokens (as
        ``pooling`` says), ``(N, d_sae)``; the SAE follows the activations to their device."""
        sae = self.sae
        if sae.W_enc.device != residual.device:
            sae.to(residual.device)
        return pooled_features(sae, residual, response_mask, self.pooling)
