"""The three LTA-Thinker losses (Wang et al. 2025, "LTA-thinker: Latent Thought-Augmented Training Framework for
Large Language Models on Complex Reasoning", https://arxiv.org/abs/2509.12875), as pure functions and one class.

With ``P`` the projected generator outputs (in the base's embedding space), ``a = P[question_end]`` the anchor,
``t_j`` the N injected thoughts and ``s_1..s_S`` the projected outputs at the end of each gold reasoning step:

    L_SFT   = -(1/|Y|) Σ_{y∈Y} log π_base(y | prompt with thoughts)            (answer tokens Y, batch token mean)
    L_align = (1/N) Σ_j KL(softmax(a) ‖ softmax(t_j))                          (softmax over the hidden dimension)
    L_focus = -log [exp(cos(a, s_+)/τ) / Σ_j exp(cos(a, s_j)/τ)]               (InfoNCE, τ = 0.1)
              s_+ = argmax_j cos(s_j, ē),  ē = mean base embedding of the answer tokens (chosen without gradient)
    L       = w_sft L_SFT + w_focus L_focus + w_align L_align + w_var L_var     (authors: 0.33 each, w_var = 0)

``L_var`` is not the authors': with the variance-carrying prior (:class:`~lit_align.thinker.generator.
GaussianThoughts`) it is ``(1/D) Σ_d KL(N(μ_d, σ_d²) ‖ N(μ_d, 1))``, which keeps σ from collapsing to zero.
No stop-gradient anywhere except the choice of ``s_+`` (as the authors' code).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_align.errors import ConfigError


def answer_nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed next-token negative log-likelihood of the labelled tokens of each sequence, and their count.

    Args:
        logits: the base's logits. Shape ``(batch, time, vocab)``.
        labels: target ids, ``-100`` where masked (prompt, thoughts, padding). Shape ``(batch, time)``.
    """
    targets = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets.clamp(min=0), reduction="none")
    mask = targets != -100
    return (nll * mask).sum(-1), mask.sum(-1)


def alignment_kl(anchor: Tensor, thoughts: Tensor) -> Tensor:
    """``(1/N) Σ_j KL(softmax(a) ‖ softmax(t_j))`` per example.

    Args:
        anchor: ``P[question_end]``. Shape ``(batch, hidden)``.
        thoughts: the projected thoughts. Shape ``(batch, N, hidden)``.
    """
    log_p = F.log_softmax(anchor.float(), dim=-1).unsqueeze(1)
    log_q = F.log_softmax(thoughts.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)


def focus_infonce(
    anchor: Tensor, steps: Tensor, step_mask: Tensor, answer_embedding: Tensor, temperature: float = 0.1
) -> tuple[Tensor, Tensor]:
    """InfoNCE of the anchor against the step vectors, the positive being the step closest to the answer.

    Args:
        anchor: ``P[question_end]``. Shape ``(batch, hidden)``.
        steps: projected outputs at each step's end. Shape ``(batch, S, hidden)``.
        step_mask: which steps exist. Shape ``(batch, S)``.
        answer_embedding: mean base input embedding of the answer tokens. Shape ``(batch, hidden)``.
        temperature: τ of ``cos/τ``.

    Returns:
        ``(losses, valid)``, each of shape ``(batch,)``: the loss of each example (0 where it has no step) and
        whether it has a step.
    """
    steps_unit = F.normalize(steps.float(), dim=-1)
    with torch.no_grad():
        to_answer = torch.einsum("bsh,bh->bs", steps_unit, F.normalize(answer_embedding.float(), dim=-1))
        positive = to_answer.masked_fill(~step_mask, float("-inf")).argmax(-1)
    logits = torch.einsum("bsh,bh->bs", steps_unit, F.normalize(anchor.float(), dim=-1)) / temperature
    valid = step_mask.any(-1)
    logits = logits.masked_fill(~step_mask, float("-inf")).masked_fill(~valid[:, None], 0.0)  # no NaN gradients
    losses = -logits.log_softmax(-1).gather(1, positive[:, None]).squeeze(1)
    return torch.where(valid, losses, torch.zeros_like(losses)), valid


def variance_kl(logvar: Tensor) -> Tensor:
    """``(1/(N·D)) Σ KL(N(μ, σ²) ‖ N(μ, 1)) = mean(σ² − 1 − log σ²)/2`` per example. Shape ``(batch, N, D)``."""
    return 0.5 * (logvar.float().exp() - 1 - logvar.float()).flatten(1).mean(-1)


@dataclass
class ThoughtTerms:
    """What the losses read, for one batch (shapes as in the functions above)."""

    logits: Tensor
    labels: Tensor
    anchor: Tensor
    thoughts: Tensor
    steps: Tensor | None = None
    step_mask: Tensor | None = None
    answer_embedding: Tensor | None = None
    logvar: Tensor | None = None


@dataclass
class ThoughtLossOutput:
    loss: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)
    """Each term's unweighted batch value, for logging."""


class ThoughtLoss:
    """``L = w_sft L_SFT + w_focus L_focus + w_align L_align + w_var L_var``; a term of weight 0 is not computed
    (and then needs no inputs). The authors train with 0.33 on each of the first three.

    Args:
        sft: weight of the answer NLL (typically 0.33–1).
        focus: weight of the reasoning-focus InfoNCE.
        align: weight of the semantic-alignment KL.
        variance: weight of the variance regulariser of the Gaussian prior (0 without it; 1e-3–1e-1 with it).
        temperature: τ of the InfoNCE (authors: 0.1).
    """

    def __init__(
        self, sft: float = 0.33, focus: float = 0.33, align: float = 0.33, variance: float = 0.0,
        temperature: float = 0.1,
    ) -> None:
        self.weights = {"sft": sft, "focus": focus, "align": align, "variance": variance}
        for name, weight in self.weights.items():
            if not weight >= 0:
                raise ConfigError(f"model.loss.{name}", weight, "a loss weight must be ≥ 0 (0 leaves the term out)")
        if not temperature > 0:
            raise ConfigError("model.loss.temperature", temperature, "the InfoNCE temperature must be > 0")
        self.temperature = temperature

    def needs_steps(self) -> bool:
        return self.weights["focus"] > 0

    def __call__(self, terms: ThoughtTerms) -> ThoughtLossOutput:
        parts: dict[str, Tensor] = {}
        if self.weights["sft"] > 0:
            nll, count = answer_nll(terms.logits, terms.labels)
            parts["sft"] = nll.sum() / count.sum().clamp(min=1)
        if self.weights["align"] > 0:
            parts["align"] = alignment_kl(terms.anchor, terms.thoughts).mean()
        if self.weights["focus"] > 0:
            losses, valid = focus_infonce(terms.anchor, terms.steps, terms.step_mask, terms.answer_embedding,
                                          self.temperature)
            parts["focus"] = losses.sum() / valid.sum().clamp(min=1)
        if self.weights["variance"] > 0 and terms.logvar is not None:
            parts["variance"] = variance_kl(terms.logvar).mean()
        loss = sum(self.weights[name] * value for name, value in parts.items())
        return ThoughtLossOutput(loss, parts)
