"""Thought generators: question tokens → hidden states, read at the N thought-query positions.

Two interchangeable generators, as in the authors' ``llm_model.py``:

- :class:`BlockPrior` (their default "learnable prior"): one randomly initialised transformer block — post-norm
  RMSNorm, single-head self-attention, ReLU FFN of the base's intermediate size, no dropout — over the base's
  frozen input embeddings. The authors' block sees no positions; ``positional=True`` adds a fixed sinusoidal
  encoding (scaled to the embedding table's RMS), without which identical tokens get identical outputs.
- :class:`AssistantLM` (SoftCoT): the last hidden states of a small causal LM, frozen unless it has LoRA.

:class:`GaussianThoughts` is the optional variance-carrying prior (not in the authors' code): a learned
log-variance around the generator's output and reparameterised sampling ``z = μ + σ ε``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lit_align.models.policy import PolicySpec, build_policy, final_hidden


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) · w`` in float32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        return (self.weight * x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class ThoughtBlock(nn.Module):
    """``x ← norm1(x + Attn(x)); x ← norm2(x + W2 ReLU(W1 x))`` (parameter names as the authors', so their
    ``TransformerBlock.bin`` loads)."""

    def __init__(self, hidden: int, intermediate: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden, num_heads=1, dropout=0.0, batch_first=True)
        self.linear1 = nn.Linear(hidden, intermediate)
        self.linear2 = nn.Linear(intermediate, hidden)
        self.norm1 = RMSNorm(hidden, eps)
        self.norm2 = RMSNorm(hidden, eps)

    def forward(self, x: Tensor, padding: Tensor) -> Tensor:
        x = self.norm1(x + self.self_attn(x, x, x, key_padding_mask=padding, need_weights=False)[0])
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))


class ThoughtGenerator(nn.Module):
    """Maps generator-prompt ids to hidden states ``(batch, time, hidden_size)``; built against the base in
    :meth:`bind` (called from the LightningModule's ``configure_model``)."""

    hidden_size: int

    def bind(self, base: nn.Module) -> None:
        raise NotImplementedError

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        raise NotImplementedError


class BlockPrior(ThoughtGenerator):
    """The authors' "learnable prior": one :class:`ThoughtBlock` over the base's frozen token embeddings.

    Args:
        positional: add a sinusoidal position encoding (the fix for identical outputs at identical tokens).
        eps: RMSNorm epsilon (authors: 1e-5 for Llama, 1e-6 for Qwen).
    """

    def __init__(self, positional: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.positional = positional
        self.eps = eps
        self.block: ThoughtBlock | None = None
        self._embedding: list[nn.Module] = []  # the base's, not registered here (not trained, not saved twice)

    def bind(self, base: nn.Module) -> None:
        config = base.config
        self.hidden_size = config.hidden_size
        self.block = ThoughtBlock(config.hidden_size, config.intermediate_size, self.eps)
        self._embedding = [base.get_input_embeddings()]
        self.position_scale = float(self._embedding[0].weight.detach().float().pow(2).mean().sqrt())

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        x = self._embedding[0](input_ids).to(self.block.linear1.weight.dtype)
        if self.positional:
            x = x + self.position_scale * sinusoids(x.shape[1], x.shape[2], x.device).to(x.dtype)
        return self.block(x, padding=attention_mask == 0)


def sinusoids(length: int, dim: int, device: torch.device) -> Tensor:
    """The fixed sinusoidal encoding of Vaswani et al. 2017. Shape ``(length, dim)``."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class AssistantLM(ThoughtGenerator):
    """SoftCoT's generator: the final hidden states of a small causal LM (frozen; trained only through a LoRA
    adapter in ``assistant.lora``). It reads the base's token ids, so it must share the base's vocabulary.

    Args:
        assistant: where the small LM comes from (path or config, dtype, LoRA).
    """

    def __init__(self, assistant: PolicySpec) -> None:
        super().__init__()
        self.spec = assistant
        self.model: nn.Module | None = None

    def bind(self, base: nn.Module) -> None:
        self.model = build_policy(self.spec)
        if not self.spec.adapted:
            self.model.requires_grad_(False)
        if self.model.config.vocab_size != base.config.vocab_size:
            raise ValueError(
                f"the assistant LM's vocabulary ({self.model.config.vocab_size}) differs from the base's "
                f"({base.config.vocab_size}); AssistantLM reads the base's token ids, so use one tokenizer"
            )
        self.hidden_size = self.model.config.hidden_size

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return final_hidden(self.model, input_ids, attention_mask)


class GaussianThoughts(nn.Module):
    """``z = μ + exp(½ log σ²) ⊙ ε``, ``ε ~ N(0, I)``, with ``log σ² = W μ + b`` (W = 0, b = ``init_logvar`` at
    the start). Samples in training and wherever thoughts are sampled at test time (one sample per answer).

    Args:
        init_logvar: the initial log-variance (−2: σ ≈ 0.37 against unit-RMS generator outputs).
    """

    def __init__(self, init_logvar: float = -2.0) -> None:
        super().__init__()
        self.init_logvar = init_logvar
        self.logvar: nn.Linear | None = None

    def bind(self, hidden_size: int) -> None:
        self.logvar = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.logvar.weight)
        nn.init.constant_(self.logvar.bias, self.init_logvar)

    def forward(self, mean: Tensor) -> tuple[Tensor, Tensor]:
        logvar = self.logvar(mean)
        return mean + torch.exp(0.5 * logvar) * torch.randn_like(mean), logvar
