"""End-of-training report of the controlled task: oracle reward of the reference's and the policy's samples.

At ``on_fit_end`` the callback samples continuations of the held-out prompts from the reference (the SFT
model) and from the aligned policy, scores them with the oracle, estimates ``KL(π ‖ π_ref)`` from the
policy's samples, reads the held-out implicit-reward accuracy that validation logged, and reports all of it
(log line, ``self.results``, and every logger of the trainer).

It relies on two small protocols, so it works with any module and data module that follow them:

- the LightningModule (:class:`SamplingModule`) has ``policy``, the model being trained (a transformers
  causal LM, possibly peft-wrapped), and ``reference_model()``, a context manager yielding the reference as
  a model that can ``generate`` (a frozen copy, or the policy with its adapter disabled);
- the data module (:class:`HeldOutPrompts`) has ``tokenizer`` and ``heldout_prompts_path`` (JSON lines
  ``{"prompt": ...}``), as :class:`~lit_align.tasks.datamodule.ControlledTaskDataModule` does; an explicit
  ``prompts_path`` overrides the latter.
"""

from __future__ import annotations

import statistics
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import lightning as L
from jsonargparse.typing import PositiveFloat, PositiveInt
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import nn
from transformers import PreTrainedTokenizerBase

from lit_align.tasks.oracle import SentimentOracle
from lit_align.tasks.pairs import read_jsonl
from lit_align.tasks.sampling import response_logps, sample_continuations
from lit_align.validation import require_counts, require_positive


class SamplingModule(Protocol):
    policy: nn.Module

    def reference_model(self) -> AbstractContextManager[nn.Module]: ...


class HeldOutPrompts(Protocol):
    tokenizer: PreTrainedTokenizerBase
    heldout_prompts_path: Path


class OracleRewardReport(L.Callback):
    """Samples from reference and policy on held-out prompts at the end of ``fit`` and scores them.

    Reported (``self.results``, also sent to the loggers under ``task/...``): ``reference_reward`` and
    ``policy_reward`` (mean oracle reward of the samples), their standard deviations, ``policy_kl`` (mean of
    ``log π(y|x) - log π_ref(y|x)`` over the policy's samples, an estimate of ``KL(π ‖ π_ref)`` per prompt;
    samples cut at ``max_new_tokens`` are scored as if they ended there) and ``heldout_reward_accuracy`` (the
    last value of ``accuracy_key`` in ``trainer.callback_metrics``, when validation ran).

    Args:
        prompts_path: held-out prompts; unset reads ``trainer.datamodule.heldout_prompts_path``.
        num_prompts: how many of them to use (the first ones); unset uses all.
        samples_per_prompt: continuations sampled per prompt from each model.
        max_new_tokens: longest continuation.
        temperature: sampling temperature (1 samples the model's own distribution).
        batch_size: rows per ``generate`` call.
        seed: sampling seed; reference and policy see the same seeds.
        accuracy_key: the logged metric holding the held-out implicit-reward accuracy.
    """

    def __init__(
        self,
        prompts_path: str | None = None,
        num_prompts: PositiveInt | None = None,
        samples_per_prompt: PositiveInt = 2,
        max_new_tokens: PositiveInt = 48,
        temperature: PositiveFloat = 1.0,
        batch_size: PositiveInt = 256,
        seed: int = 1234,
        accuracy_key: str = "val/rewards/accuracies",
    ) -> None:
        require_counts(
            num_prompts=num_prompts,
            samples_per_prompt=samples_per_prompt,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )
        require_positive(temperature=temperature)
        self.prompts_path = prompts_path
        self.num_prompts = num_prompts
        self.samples_per_prompt = samples_per_prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = batch_size
        self.seed = seed
        self.accuracy_key = accuracy_key
        self.oracle = SentimentOracle()
        self.results: dict[str, float] = {}

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: SamplingModule) -> None:
        datamodule = trainer.datamodule
        tokenizer = datamodule.tokenizer
        prompts = [row["prompt"] for row in read_jsonl(self.prompts_path or datamodule.heldout_prompts_path)]
        prompts = prompts[: self.num_prompts]
        policy_samples = self._sample(pl_module.policy, tokenizer, prompts)
        with pl_module.reference_model() as reference:
            reference_samples = self._sample(reference, tokenizer, prompts)
            reference_logps = self._logps(reference, tokenizer, prompts, policy_samples)
        policy_logps = self._logps(pl_module.policy, tokenizer, prompts, policy_samples)
        policy_rewards = self.oracle([y for ys in policy_samples for y in ys])
        reference_rewards = self.oracle([y for ys in reference_samples for y in ys])
        self.results = {
            "reference_reward": statistics.fmean(reference_rewards),
            "reference_reward_std": statistics.pstdev(reference_rewards),
            "policy_reward": statistics.fmean(policy_rewards),
            "policy_reward_std": statistics.pstdev(policy_rewards),
            "policy_kl": float((policy_logps - reference_logps).mean()),
        }
        accuracy = trainer.callback_metrics.get(self.accuracy_key)
        if accuracy is not None:
            self.results["heldout_reward_accuracy"] = float(accuracy)
        rank_zero_info(self.describe(len(prompts)))
        for logger in trainer.loggers:
            logger.log_metrics({f"task/{k}": v for k, v in self.results.items()}, step=trainer.global_step)

    def describe(self, num_prompts: int) -> str:
        """The report as a few lines of text."""
        r = self.results
        lines = [
            f"Oracle reward of samples on {num_prompts} held-out prompts ({self.samples_per_prompt} per prompt):",
            f"  SFT reference   {r['reference_reward']:.3f} ± {r['reference_reward_std']:.3f}",
            f"  aligned policy  {r['policy_reward']:.3f} ± {r['policy_reward_std']:.3f}   "
            f"({r['policy_reward'] - r['reference_reward']:+.3f}, KL(π‖π_ref) ≈ {r['policy_kl']:.2f} nats)",
        ]
        if "heldout_reward_accuracy" in r:
            lines.append(f"  held-out implicit-reward accuracy {r['heldout_reward_accuracy']:.3f}")
        return "\n".join(lines)

    def _sample(self, model: nn.Module, tokenizer, prompts: list[str]) -> list[list[str]]:
        return sample_continuations(
            model,
            tokenizer,
            prompts,
            num_samples=self.samples_per_prompt,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            batch_size=self.batch_size,
            seed=self.seed,
        )

    def _logps(self, model: nn.Module, tokenizer, prompts: list[str], samples: list[list[str]]):
        flat_prompts = [p for p, ys in zip(prompts, samples, strict=True) for _ in ys]
        return response_logps(model, tokenizer, flat_prompts, [y for ys in samples for y in ys], self.batch_size)
