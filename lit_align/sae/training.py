"""Training a sparse autoencoder on residual activations: loss, metrics and the LightningModule.

Loss per token, averaged over a batch:

    topk   L = ‖x - x̂‖²                                  (Gao et al. 2024, https://arxiv.org/abs/2406.04093)
    relu   L = ‖x - x̂‖² + λ Σ_i f_i ‖W_dec,i‖₂            (Anthropic, "Circuits Updates - April 2024")

TopK fixes the number of active features, so it needs no sparsity coefficient and is the default; its
decoder rows are kept at unit norm after every optimiser step (the feature magnitudes carry the scale). The
ReLU penalty weighs each feature by its decoder norm, so shrinking ``f`` while growing ``W_dec`` gains nothing.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from jsonargparse.typing import PositiveFloat, PositiveInt
from torch import Tensor
from torchmetrics import Metric

from lit_align.sae.autoencoder import SparseAutoencoder


def sae_loss(sae: SparseAutoencoder, x: Tensor, l1_coefficient: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """The training loss of the module docstring on a batch ``x (tokens, d_model)``.

    Returns:
        ``(loss, x_hat, features)``.
    """
    x = x.to(sae.W_enc.dtype)
    features = sae.encode(x)
    x_hat = sae.decode(features)
    loss = (x_hat - x).pow(2).sum(dim=-1).mean()
    if l1_coefficient:
        loss = loss + l1_coefficient * (features * sae.W_dec.norm(dim=1)).sum(dim=-1).mean()
    return loss, x_hat, features


class ReconstructionMetrics(Metric):
    """Reconstruction quality over every token seen, accumulated in float64 and summed across processes.

    ``compute()`` returns
    ``mse``: mean squared error per element, ``Σ‖x - x̂‖² / (n d_model)``;
    ``explained_variance``: ``1 - Σ‖x - x̂‖² / Σ‖x - x̄‖²`` with ``x̄`` the mean over all tokens seen;
    ``l0``: mean number of active features per token;
    ``dead_fraction``: fraction of features that never fired.
    """

    full_state_update = False

    def __init__(self, d_model: int, d_sae: int) -> None:
        super().__init__()
        zero = torch.zeros((), dtype=torch.float64)
        self.add_state("squared_error", zero.clone(), dist_reduce_fx="sum")
        self.add_state("sum_x", torch.zeros(d_model, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_squared_norm", zero.clone(), dist_reduce_fx="sum")
        self.add_state("active", zero.clone(), dist_reduce_fx="sum")
        self.add_state("tokens", zero.clone(), dist_reduce_fx="sum")
        self.add_state("fired", torch.zeros(d_sae, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, x: Tensor, x_hat: Tensor, features: Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        self.squared_error += (x - x_hat).pow(2).sum()
        self.sum_x += x.sum(dim=0)
        self.sum_squared_norm += x.pow(2).sum()
        fired = features > 0
        self.active += fired.sum()
        self.tokens += x.shape[0]
        self.fired += fired.sum(dim=0)

    def compute(self) -> dict[str, Tensor]:
        total_variance = self.sum_squared_norm - self.sum_x.pow(2).sum() / self.tokens
        return {
            "mse": self.squared_error / (self.tokens * self.sum_x.numel()),
            "explained_variance": 1 - self.squared_error / total_variance,
            "l0": self.active / self.tokens,
            "dead_fraction": (self.fired == 0).double().mean(),
        }


class SAETrainer(L.LightningModule):
    """Trains a :class:`SparseAutoencoder` (with ``b_dec`` subtracted at the input) on batches of residual
    activations ``(tokens, d_model)``; validation logs ``val/mse``, ``val/explained_variance``, ``val/l0`` and
    ``val/dead_fraction`` over the whole validation set.

    Args:
        d_model: residual width.
        d_sae: number of features (typically 8-32 × ``d_model``).
        activation: ``"topk"`` (default) or ``"relu"``.
        k: active features per token for ``"topk"``.
        l1_coefficient: λ of the ReLU sparsity penalty (> 0 for ``"relu"``; must be 0 for ``"topk"``).
        lr: Adam learning rate.
        layer: decoder layer the activations come from (stored in the SAE's metadata).
    """

    def __init__(
        self,
        d_model: PositiveInt,
        d_sae: PositiveInt,
        activation: Literal["topk", "relu"] = "topk",
        k: PositiveInt | None = None,
        l1_coefficient: float = 0.0,
        lr: PositiveFloat = 1e-3,
        layer: int | None = None,
    ) -> None:
        super().__init__()
        if activation not in ("topk", "relu"):
            raise ValueError(f"activation must be 'topk' or 'relu' for training, got activation={activation!r}")
        if activation == "relu" and not l1_coefficient > 0:
            raise ValueError(f"activation='relu' needs l1_coefficient > 0, got l1_coefficient={l1_coefficient}")
        if activation == "topk" and l1_coefficient != 0:
            raise ValueError(f"activation='topk' takes no L1 penalty, got l1_coefficient={l1_coefficient}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got lr={lr}")
        self.save_hyperparameters()
        self.sae = SparseAutoencoder(d_model, d_sae, activation, k, apply_b_dec_to_input=True, layer=layer)
        self.val_metrics = ReconstructionMetrics(d_model, d_sae)

    def forward(self, x: Tensor) -> Tensor:
        return self.sae(x)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x = batch.to(self.sae.W_enc.dtype)
        loss, x_hat, features = sae_loss(self.sae, x, self.hparams.l1_coefficient)
        metrics = {
            "train/loss": loss,
            "train/mse": (x_hat - x).pow(2).mean(),
            "train/l0": (features > 0).sum(dim=-1).float().mean(),
        }
        self.log_dict(metrics, on_step=True, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        return loss

    def on_train_batch_end(self, outputs: object, batch: Tensor, batch_idx: int) -> None:
        if self.sae.activation == "topk":
            with torch.no_grad():
                self.sae.W_dec.div_(self.sae.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-12))

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        x = batch.to(self.sae.W_enc.dtype)
        features = self.sae.encode(x)
        self.val_metrics.update(x, self.sae.decode(features), features)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.log_dict({f"val/{name}": value.float() for name, value in values.items()})
        self.val_metrics.reset()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.sae.parameters(), lr=self.hparams.lr)
