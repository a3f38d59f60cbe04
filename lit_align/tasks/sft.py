"""Supervised fine-tuning of a tiny Llama on the review corpus: the reference model of the controlled task.

A fresh ``LlamaForCausalLM`` (built from :class:`TinyLlamaSettings`, seeded) learns next-token prediction on
``<bos> review <eos>`` with a Lightning ``Trainer`` (no logger, no checkpoints, a progress bar); AdamW with
linear warm-up and cosine decay.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import lightning as L
import torch
from jsonargparse.typing import PositiveFloat, PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    get_cosine_with_min_lr_schedule_with_warmup,
)


@dataclass(frozen=True)
class TinyLlamaSettings:
    """Shape of the task's Llama; the vocabulary size comes from the tokenizer."""

    hidden_size: PositiveInt = 64
    intermediate_size: PositiveInt = 192
    num_hidden_layers: PositiveInt = 2
    num_attention_heads: PositiveInt = 4
    num_key_value_heads: PositiveInt = 2
    max_position_embeddings: PositiveInt = 128
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, int) and not isinstance(value, bool) and value < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={value}")
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                "num_attention_heads must divide hidden_size and num_key_value_heads must divide "
                f"num_attention_heads, got hidden_size={self.hidden_size}, "
                f"num_attention_heads={self.num_attention_heads}, num_key_value_heads={self.num_key_value_heads}"
            )

    def llama_config(self, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
        """The ``LlamaConfig`` of this shape for ``tokenizer``'s vocabulary and special tokens."""
        return LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **asdict(self),
        )


@dataclass(frozen=True)
class SFTSettings:
    """Optimisation of the SFT run."""

    max_steps: PositiveInt = 800
    """Optimizer steps (the corpus is cycled as needed)."""
    batch_size: PositiveInt = 64
    """Reviews per step."""
    learning_rate: PositiveFloat = 3e-3
    """Peak AdamW learning rate; it decays along a cosine to a tenth of this."""
    warmup_steps: int = 30
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {name}={getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got learning_rate={self.learning_rate}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError(
                f"warmup_steps and weight_decay must be >= 0, got warmup_steps={self.warmup_steps}, "
                f"weight_decay={self.weight_decay}"
            )


class CausalLMSFT(L.LightningModule):
    """Next-token prediction on padded token sequences (pads are ignored by the loss).

    Args:
        config: the model to build (in ``configure_model``).
        settings: learning rate, warm-up and steps.
        seed: seed of the initial weights.
    """

    def __init__(self, config: LlamaConfig, settings: SFTSettings, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.settings = settings
        self.seed = seed
        self.model: LlamaForCausalLM | None = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model = LlamaForCausalLM(self.config)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.model(**batch).loss
        self.log("sft/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        s = self.settings
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=s.learning_rate, weight_decay=s.weight_decay)

        scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, s.warmup_steps, s.max_steps, min_lr_rate=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _collate(tokenizer: PreTrainedTokenizerBase, rows: list[list[int]]) -> dict[str, Tensor]:
    """Right-padded ids and mask (``tokenizer.pad``); the labels are the ids, padding ignored (-100)."""
    batch = tokenizer.pad({"input_ids": rows}, padding_side="right", return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def train_sft(
    texts: list[str],
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    model: TinyLlamaSettings = TinyLlamaSettings(),
    settings: SFTSettings = SFTSettings(),
    seed: int = 0,
    progress: bool = True,
) -> float:
    """Train a fresh tiny Llama on ``texts`` and ``save_pretrained`` it (and the tokenizer) to ``out_dir``.

    ``seed`` fixes the initial weights and the batch order.

    Returns the training loss of the last step.
    """
    rows = [ids + [tokenizer.eos_token_id] for ids in tokenizer(texts)["input_ids"]]
    loader = DataLoader(
        rows,
        batch_size=settings.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=partial(_collate, tokenizer),
        generator=torch.Generator().manual_seed(seed),
    )
    module = CausalLMSFT(model.llama_config(tokenizer), settings, seed)
    trainer = L.Trainer(
        max_steps=settings.max_steps,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=loader)
    module.model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return float(trainer.callback_metrics["sft/loss"])
