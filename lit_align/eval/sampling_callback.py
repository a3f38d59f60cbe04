"""``SamplingEvaluation``: every N optimizer steps, sample from the policy on held-out prompts and log how far it
has moved from the reference, what reward it earns, how diverse it is, and how calibrated its implicit reward
model is on held-out pairs.

Logged under ``eval/`` to every logger of the trainer at the current global step (and kept in
``self.history``):

- ``kl_reverse``: ``KL(π_θ ‖ π_ref)`` from the policy's samples; ``kl_forward``: ``KL(π_ref ‖ π_θ)`` from the
  reference's samples (:class:`~lit_align.eval.metrics.SequenceKL`); each with its standard error (``_se``);
- ``reward`` (with ``reward_se`` and ``reward_std``) and ``reference_reward`` (with ``reference_reward_std``): mean
  reward of the policy's and the reference's samples; ``win_rate``: how often the policy's sample beats the
  reference's for the same prompt (ties count one half);
- ``entropy`` (and ``reference_entropy``): mean predictive entropy per sampled token; ``distinct_n`` (and
  ``reference_distinct_n``) for each n; ``length``: mean sampled words; ``truncated``: fraction of the policy's
  samples cut at ``max_new_tokens`` (scored without an EOS term, see :mod:`lit_align.eval.generation`);
- on the data module's validation pairs, when it has any: ``pairs/accuracy`` (implicit reward accuracy),
  ``pairs/ece`` (:class:`~lit_align.eval.metrics.PreferenceCalibrationError`, 10 bins), ``pairs/margin``, and,
  with an online reference, ``pairs/seq_kl_chosen`` and ``pairs/seq_kl_rejected`` (TDPO's sequential KL).

A few prompts with both models' samples and rewards go to TensorBoard as text (``eval/samples``).

This is lit-align's one evaluation path (:class:`~lit_align.tasks.OracleRewardReport` is a preset of it). It
relies on two small protocols: the module has ``policy`` and ``reference_model()`` (a context yielding the
reference as a model that can ``generate``), the data module ``tokenizer`` and ``heldout_prompts_path`` (or give
``prompts_path``). The reward is the task's: ``reward_fn(prompts, responses)``, any
:class:`~lit_align.online.RewardFn` (in YAML, a ``class_path`` such as ``lit_align.tasks.SentimentOracle``). Both
models sample with the same seeds, so at step 0 the policy's samples are the reference's: both KLs are 0 and the win
rate is 1/2. Prompts are shared out between processes and every metric is reduced over all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torchmetrics import MeanMetric

from lit_align.eval.generation import SampleSet, draw_samples, score_responses
from lit_align.eval.metrics import (
    PreferenceCalibrationError,
    SequenceKL,
    WinRate,
    reduced,
    standard_deviation,
    standard_error,
)
from lit_align.eval.pairs import pair_statistics
from lit_align.jsonl import read_jsonl
from lit_align.online.reward import RewardFn
from lit_align.validation import require_counts, require_positive

log = logging.getLogger(__name__)


class SamplingEvaluation(L.Callback):
    """Samples from policy and reference on held-out prompts every ``every_n_steps`` optimizer steps (and at the
    start and end of training) and logs KL, reward, win rate, entropy, distinct-n and held-out calibration.

    Args:
        every_n_steps: optimizer steps between evaluations; unset: only at the start and end of training.
        reward_fn: the task's reward, ``reward_fn(prompts, responses)`` (required; docs/online.md).
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
        prefix: the loggers' key prefix.
    """

    def __init__(
        self,
        every_n_steps: PositiveInt | None = 50,
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
        prefix: str = "eval",
    ) -> None:
        if reward_fn is None:
            raise ValueError("SamplingEvaluation needs reward_fn, the task's reward of prompts and responses (in YAML: "
                             "reward_fn: {class_path: lit_align.tasks.SentimentOracle} for the built-in task)")
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
        self.reward_fn = reward_fn
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
        self.prefix = prefix
        self.history: list[dict[str, float]] = []
        self._reference: SampleSet | None = None
        self._last_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start:
            self.evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        periodic = self.every_n_steps is not None and step > 0 and step % self.every_n_steps == 0
        if periodic and step != self._last_step:
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
        compute = partial(reduced, device=pl_module.device)
        values = {
            "kl_reverse": compute(SequenceKL(), policy.logps, reference_on_policy),
            "kl_reverse_se": standard_error(policy.logps - reference_on_policy, pl_module.device),
            "kl_forward": compute(SequenceKL(), reference_samples.logps, policy_on_reference),
            "kl_forward_se": standard_error(reference_samples.logps - policy_on_reference, pl_module.device),
            "reward": compute(MeanMetric(), policy.rewards),
            "reward_se": standard_error(policy.rewards, pl_module.device),
            "reward_std": standard_deviation(policy.rewards, pl_module.device),
            "reference_reward": compute(MeanMetric(), reference_samples.rewards),
            "reference_reward_std": standard_deviation(reference_samples.rewards, pl_module.device),
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
            logger.log_metrics({f"{self.prefix}/{name}": v for name, v in values.items()}, step=trainer.global_step)
        if trainer.is_global_zero:
            self._log_texts(trainer, policy)
        log.info("step %d: %s", trainer.global_step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
        return values

    def _prompts(self, trainer: L.Trainer) -> list[str]:
        """This process's share of the held-out prompts."""
        path = self.prompts_path or trainer.datamodule.heldout_prompts_path
        prompts = [row["prompt"] for row in read_jsonl(path)][: self.num_prompts]
        return prompts[trainer.global_rank :: trainer.world_size]

    def _samples(self, model, tokenizer, prompts: list[str], device: torch.device) -> SampleSet:
        return draw_samples(model, tokenizer, prompts, self.reward_fn, samples_per_prompt=self.samples_per_prompt,
                            max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                            batch_size=self.batch_size, seed=self.seed, distinct_n=self.distinct_n, device=device)

    def _score(self, model, tokenizer, samples: SampleSet) -> Tensor:
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

    def _log_texts(self, trainer: L.Trainer, policy: SampleSet) -> None:
        rows = ["| prompt | reference | r | policy | r |", "|---|---|---|---|---|"]
        reference = self._reference
        for i in range(0, min(self.num_texts * self.samples_per_prompt, len(policy.texts)), self.samples_per_prompt):
            rows.append(
                f"| {policy.prompts[i]} | {reference.texts[i]} | {float(reference.rewards[i]):.2f} "
                f"| {policy.texts[i]} | {float(policy.rewards[i]):.2f} |"
            )
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text(f"{self.prefix}/samples", "\n".join(rows), global_step=trainer.global_step)
