"""Self-consistency inference (Wang et al. 2023, https://arxiv.org/abs/2203.11171), as LTA-Thinker evaluates:
thoughts from the question, ``k`` sampled answers (authors: k = 10, T = 0.7, top-p 0.8, top-k 20), the answers
extracted and the most frequent one kept. Greedy decoding gives the single-answer baseline."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import lightning as L
import torch
from jsonargparse.typing import PositiveInt

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str, prefix: str = "####") -> str | None:
    """The first word after the last ``prefix`` (trailing punctuation and thousands separators removed), else the
    last number of the text, else None."""
    if prefix in text:
        words = text.rsplit(prefix, 1)[1].split()
        return words[0].rstrip(".,;:!").replace(",", "") if words else None
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def majority_vote(answers: list[str | None]) -> str | None:
    """The most frequent extracted answer (ties: the one seen first); None when none was extracted."""
    counts = Counter(answer for answer in answers if answer is not None)
    return counts.most_common(1)[0][0] if counts else None


@dataclass
class SamplingSettings:
    k: PositiveInt = 10
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    max_new_tokens: PositiveInt = 16
    sample_thoughts: bool = True
    """With a variance prior: one thought sample per answer (SoftCoT++-style)."""


def evaluate(module: L.LightningModule, loader, tokenizer, settings: SamplingSettings,
             prefix: str = "####", max_batches: int | None = None) -> dict[str, float]:
    """Held-out accuracy: ``acc_greedy`` (greedy, mean thoughts), ``acc_sample`` (mean over the k samples),
    ``acc_vote`` (majority of the k), and ``vote_gain = acc_vote − acc_sample``."""
    was_training = module.training
    module.eval()
    hits = {"greedy": [], "sample": [], "vote": []}
    special = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        batch = {key: value.to(module.device) if torch.is_tensor(value) else value for key, value in batch.items()}
        greedy = module.sample_answers(batch, 1, do_sample=False, max_new_tokens=settings.max_new_tokens, **special)
        sampled = module.sample_answers(
            batch, settings.k, settings.sample_thoughts, do_sample=True, temperature=settings.temperature,
            top_p=settings.top_p, top_k=settings.top_k, max_new_tokens=settings.max_new_tokens, **special,
        )
        greedy_answers = [extract_answer(t, prefix) for t in tokenizer.batch_decode(greedy, skip_special_tokens=True)]
        sampled_answers = [extract_answer(t, prefix) for t in tokenizer.batch_decode(sampled, skip_special_tokens=True)]
        for b, gold in enumerate(batch["answer"]):
            votes = sampled_answers[b * settings.k : (b + 1) * settings.k]
            hits["greedy"].append(greedy_answers[b] == gold)
            hits["sample"].append(sum(v == gold for v in votes) / settings.k)
            hits["vote"].append(majority_vote(votes) == gold)
    module.train(was_training)
    result = {f"acc_{name}": sum(values) / max(1, len(values)) for name, values in hits.items()}
    result["vote_gain"] = result["acc_vote"] - result["acc_sample"]
    return result


class SelfConsistency(L.Callback):
    """After each validation epoch (not the sanity check), logs ``val/acc_greedy``, ``val/acc_sample``,
    ``val/acc_vote`` and ``val/vote_gain`` over the datamodule's validation set.

    Args:
        sampling: k, temperature, top-p, top-k, length, thought sampling.
        max_batches: validation batches to evaluate (all when None).
    """

    def __init__(self, sampling: SamplingSettings | None = None, max_batches: int | None = None) -> None:
        self.sampling = sampling or SamplingSettings()
        self.max_batches = max_batches
        self.last: dict[str, float] = {}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        datamodule = trainer.datamodule
        self.last = evaluate(pl_module, datamodule.val_dataloader(), datamodule.tokenizer, self.sampling,
                             datamodule.markers.answer_prefix, self.max_batches)
        for name, value in self.last.items():
            pl_module.log(f"val/{name}", value, sync_dist=True)
