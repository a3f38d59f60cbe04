"""Sparse-autoencoder tooling for feature-level objectives (FPO): the SAE, its on-disk layouts, residual-stream
capture, response pooling, the feature extractor objectives take (:class:`SAEFeatures`) and SAE training."""

from lit_align.sae.activations import collect_activations, read_texts
from lit_align.sae.autoencoder import Activation, SparseAutoencoder, check_sae_width
from lit_align.sae.features import SAEFeatures
from lit_align.sae.hooks import ResidualCapture, decoder_layers, residual_stream
from lit_align.sae.loading import load_gemma_scope, load_sae, load_saelens, save_gemma_scope, save_saelens
from lit_align.sae.pooling import pooled_features
from lit_align.sae.training import ReconstructionMetrics, SAETrainer, sae_loss

__all__ = [
    "Activation",
    "ReconstructionMetrics",
    "ResidualCapture",
    "SAEFeatures",
    "SAETrainer",
    "SparseAutoencoder",
    "check_sae_width",
    "collect_activations",
    "decoder_layers",
    "load_gemma_scope",
    "load_sae",
    "load_saelens",
    "pooled_features",
    "read_texts",
    "residual_stream",
    "sae_loss",
    "save_gemma_scope",
    "save_saelens",
]
