"""``SamplingEvaluation``: every N optimizer steps, sample from the policy on held-out prompts and log how far it
has moved from the reference, what reward it earns, how diverse it is, and how calibrated its implicit reward
model is on held-out pairs.

Logged under ``eval/`` to every logger of the trainer at the current global step (and kept in
``self.history``):

- ``kl_reverse``: ``KL(π_θ ‖ π_ref)`` from the policy's samples; ``kl_forward``: ``KL(π_ref ‖ π_θ)`` from the
  reference's samples (:class:`~lit_align.eval.metrics.SequenceKL`); each with its standard error (``_se``);
- ``reward`` (and ``reward_se``) and ``reference_reward``: mean reward of the policy's and the reference's
  samples; ``win_rate``: how often the policy's sample beats the reference's for the same prompt (ties count
  one half);
- ``entropy`` (and ``reference_entropy``): mean predictive entropy per sampled token; ``distinct_n`` (and
  ``reference_distinct_n``) for each n; ``length``: mean sampled words; ``truncated``: fraction of the policy's
  samples cut at ``max_new_tokens`` (scored without an EOS term, see :mod:`lit_align.eval.scoring`);
- on the data module's validation pairs, when it has any: ``pairs/accuracy`` (implicit reward accuracy),
  ``pairs/ece`` (:class:`~lit_align.eval.metrics.PreferenceCalibrationError`, 10 bins), ``pairs/margin``, and,
  with an online reference, ``pairs/seq_kl_chosen`` and ``pairs/seq_kl_rejected`` (TDPO's sequential KL).

A few prompts with both models' samples and rewards go to TensorBoard as text (``eval/samples``).

It relies on the same protocols as :class:`~lit_align.tasks.OracleRewardReport`: the module has ``policy`` and
``reference_model()``, the data module ``tokenizer`` and ``heldout_prompts_path`` (or give ``prompts_path``).
The reward is task-specific: ``reward_fn`` maps a list of responses to their rewards (default: the controlled
task's :class:`~lit_align.tasks.SentimentOracle`). Both models sample with the same seeds, so at step 0 the
policy's samples are the reference's: both KLs are 0 and the win rate is 1/2. Prompts are shared out between
processes and every metric is reduced over all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics import MeanMetric, SumMetric

from lit_align.eval.metrics import DistinctN, PreferenceCalibrationError, SequenceKL, TokenEntropy, WinRate
from lit_align.eval.pairs import pair_statistics
from lit_align.eval.scoring import ended_before, score_responses
from lit_align.tasks.oracle import SentimentOracle
from lit_align.tasks.pairs import read_jsonl
from lit_align.tasks.sampling import sample_continuations
from lit_align.validation import require_counts, require_positive

log = logging.getLogger(__name__)

RewardFn = Callable[[Sequence[str]], Sequence[float]]


@dataclass
class _Samples:
    """One model's samples of this process's prompts (flattened, ``samples_per_prompt`` per prompt)."""

    prompts: list[str]
    texts: list[str]
    ended: list[bool]
    """Whether each sample ended with EOS (the others were cut at ``max_new_tokens``)."""
    rewards: Tensor
    logps: Tensor
    """Summed log-probs under the model that drew them."""
    entropy: float
    distinct: dict[int, float]


class SamplingEvaluation(L.Callback):
    """Samples from policy and reference on held-out prompts every ``every_n_steps`` optimizer steps (and at the
    start and end of training) and logs KL, reward, win rate, entropy, distinct-n and held-out calibration.

    Args:
        every_n_steps: optimizer steps between evaluations.
        reward_fn: rewards of a list of responses; unset: the controlled task's sentiment oracle.
        prompts_path: JSON lines ``{"prompt": ...}``; unset reads ``trainer.datamodule.heldout_prompts_path``.
        num_prompts: how many of them (the first ones); unset uses all.
        samples_per_prompt: continuations per prompt from each model.
        max_new_tokens: longest continuation.
        temperature: sampling temperature (1 samples the model's own distribution).
        batch_size: rows per ``generate`` call and per scoring forward pass.
        seed: sampling seed, the same at every evaluation and for both models.
        distinct_n: the n-gram orders of distinct-n.
        num_texts: prompts whose samples are logged as text (TensorBoard only).
        pairs: also evaluate the data module's validation pairs (accuracy, ECE, sequential KL).
        at_start: evaluate once before the first step (the policy is still the reference).
    """

    def __init__(
        self,
        every_n_steps: PositiveInt = 50,
        reward_fn: RewardFn | None = None,
        prompts_path: str | None = None,
        num_prompts: PositiveInt | None = 128,
        samples_per_prompt: PositiveInt = 2,
        max_new_tokens: PositiveInt = 48,
        temperature: PositiveFloat = 1.0,
        batch_size: PositiveInt = 256,
        seed: int = 1234,
        distinct_n: Sequence[PositiveInt] = (1, 2, 3),
        num_texts: NonNegativeInt = 4,
        pairs: bool = True,
        at_start: bool = True,
    ) -> None:
        require_counts(
            every_n_steps=every_n_steps,
            num_prompts=num_prompts,
            samples_per_prompt=samples_per_prompt,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            **{f"distinct_n[{i}]": n for i, n in enumerate(distinct_n)},
        )
        require_positive(temperature=temperature)
        if num_texts < 0:
            raise ValueError(f"num_texts must be >= 0, got num_texts={num_texts}")
        self.every_n_steps = every_n_steps
        self.reward_fn = reward_fn if reward_fn is not None else SentimentOracle()
        self.prompts_path = prompts_path
        self.num_prompts = num_prompts
        self.samples_per_prompt = samples_per_prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = batch_size
        self.seed = seed
        self.distinct_n = tuple(distinct_n)
        self.num_texts = num_texts
        self.pairs = pairs
        self.at_start = at_start
        self.history: list[dict[str, float]] = []
        self._reference: _Samples | None = None
        self._last_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Run one evaluation now, log it at the current global step and return its values."""
        self._last_step = trainer.global_step
        tokenizer = trainer.datamodule.tokenizer
        prompts = self._prompts(trainer)
        if self._reference is None:
            with pl_module.reference_model() as reference:
                self._reference = self._samples(reference, tokenizer, prompts, pl_module.device)
        policy = self._samples(pl_module.policy, tokenizer, prompts, pl_module.device)
        reference_samples = self._reference
        with pl_module.reference_model() as reference:
            reference_on_policy = self._score(reference, tokenizer, policy)
        policy_on_reference = self._score(pl_module.policy, tokenizer, reference_samples)
        compute = partial(_compute, device=pl_module.device)
        values = {
            "kl_reverse": compute(SequenceKL(), policy.logps, reference_on_policy),
            "kl_reverse_se": _standard_error(policy.logps - reference_on_policy, pl_module.device),
            "kl_forward": compute(SequenceKL(), reference_samples.logps, policy_on_reference),
            "kl_forward_se": _standard_error(reference_samples.logps - policy_on_reference, pl_module.device),
            "reward": compute(MeanMetric(), policy.rewards),
            "reward_se": _standard_error(policy.rewards, pl_module.device),
            "reference_reward": compute(MeanMetric(), reference_samples.rewards),
            "win_rate": compute(WinRate(), policy.rewards, reference_samples.rewards),
            "entropy": policy.entropy,
            "reference_entropy": reference_samples.entropy,
            "length": compute(MeanMetric(), torch.tensor([float(len(t.split())) for t in policy.texts])),
            "truncated": compute(MeanMetric(), torch.tensor([float(not end) for end in policy.ended])),
            **{f"distinct_{n}": value for n, value in policy.distinct.items()},
            **{f"reference_distinct_{n}": value for n, value in reference_samples.distinct.items()},
        }
        if self.pairs:
            values.update(self._pair_values(trainer, pl_module, compute))
        self.history.append({"step": float(trainer.global_step), **values})
        for logger in trainer.loggers:
            logger.log_metrics({f"eval/{name}": value for name, value in values.items()}, step=trainer.global_step)
        if trainer.is_global_zero:
            self._log_texts(trainer, policy)
        log.info("step %d: %s", trainer.global_step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
        return values

    def _prompts(self, trainer: L.Trainer) -> list[str]:
        """This process's share of the held-out prompts."""
        path = self.prompts_path or trainer.datamodule.heldout_prompts_path
        prompts = [row["prompt"] for row in read_jsonl(path)][: self.num_prompts]
        return prompts[trainer.global_rank :: trainer.world_size]

    def _samples(self, model, tokenizer, prompts: list[str], device: torch.device) -> _Samples:
        samples = sample_continuations(
            model,
            tokenizer,
            prompts,
            num_samples=self.samples_per_prompt,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            batch_size=self.batch_size,
            seed=self.seed,
        )
        flat_prompts = [p for p, ys in zip(prompts, samples, strict=True) for _ in ys]
        texts = [y for ys in samples for y in ys]
        ended = ended_before(tokenizer, flat_prompts, texts, self.max_new_tokens)
        entropy = TokenEntropy().to(device)
        logps = score_responses(
            model, tokenizer, flat_prompts, texts, ended=ended, batch_size=self.batch_size, entropy=entropy
        )
        distinct = {}
        for n in self.distinct_n:
            metric = DistinctN(n).to(device)
            metric.update(texts)
            distinct[n] = float(metric.compute())
        rewards = torch.tensor([float(r) for r in self.reward_fn(texts)], dtype=torch.float64)
        return _Samples(flat_prompts, texts, ended, rewards, logps, float(entropy.compute()), distinct)

    def _score(self, model, tokenizer, samples: _Samples) -> Tensor:
        return score_responses(
            model, tokenizer, samples.prompts, samples.texts, ended=samples.ended, batch_size=self.batch_size
        )

    def _pair_values(self, trainer: L.Trainer, pl_module: L.LightningModule, compute) -> dict[str, float]:
        loader = trainer.datamodule.val_dataloader()
        if not loader:
            return {}
        mine = (batch for i, batch in enumerate(loader) if i % trainer.world_size == trainer.global_rank)
        stats = pair_statistics(pl_module, mine)
        values = {
            "pairs/accuracy": compute(MeanMetric(), (stats.margins > 0).double()),
            "pairs/ece": compute(PreferenceCalibrationError(n_bins=10), stats.margins),
            "pairs/margin": compute(MeanMetric(), stats.margins),
        }
        if stats.chosen_seq_kl is not None:
            values["pairs/seq_kl_chosen"] = compute(MeanMetric(), stats.chosen_seq_kl)
            values["pairs/seq_kl_rejected"] = compute(MeanMetric(), stats.rejected_seq_kl)
        return values

    def _log_texts(self, trainer: L.Trainer, policy: _Samples) -> None:
        rows = ["| prompt | reference | r | policy | r |", "|---|---|---|---|---|"]
        reference = self._reference
        for i in range(0, min(self.num_texts * self.samples_per_prompt, len(policy.texts)), self.samples_per_prompt):
            rows.append(
                f"| {policy.prompts[i]} | {reference.texts[i]} | {float(reference.rewards[i]):.2f} "
                f"| {policy.texts[i]} | {float(policy.rewards[i]):.2f} |"
            )
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("eval/samples", "\n".join(rows), global_step=trainer.global_step)


def _standard_error(values: Tensor, device: torch.device) -> float:
    """Standard error of the mean of ``values`` over all processes: ``sqrt((E[v²] - E[v]²) / (n - 1))``."""
    values = values.double()
    mean = _compute(MeanMetric(), values, device=device)
    mean_square = _compute(MeanMetric(), values.square(), device=device)
    count = _compute(SumMetric(), torch.ones_like(values), device=device)
    return max(0.0, mean_square - mean**2) ** 0.5 / max(1.0, count - 1) ** 0.5


def _compute(metric, *inputs: Tensor, device: torch.device) -> float:
    """Update a fresh metric with this process's inputs and compute it over all processes (on ``device``, where
    the processes' collectives run)."""
    metric = metric.to(device)
    metric.update(*(x.to(device) for x in inputs))
    return float(metric.compute())
