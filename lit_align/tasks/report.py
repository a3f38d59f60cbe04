"""End-of-training report of the controlled task: a preset of :class:`~lit_align.eval.SamplingEvaluation`.

At the end of training it samples continuations of the held-out prompts from the reference (the SFT model) and
from the aligned policy, scores them with the task's :class:`~lit_align.tasks.SentimentOracle`, estimates
``KL(π ‖ π_ref)`` from the policy's samples (the evaluation's one estimator: samples cut at ``max_new_tokens``
are scored without an EOS term), reads the held-out implicit-reward accuracy that validation logged, and reports
all of it (log line, ``self.results``, and every logger of the trainer under ``task/``).
"""

from __future__ import annotations

import lightning as L
from jsonargparse.typing import PositiveFloat, PositiveInt
from lightning.pytorch.utilities import rank_zero_info

from lit_align.eval.sampling_callback import SamplingEvaluation
from lit_align.tasks.oracle import SentimentOracle

_RESULTS = {  # the report's names of the evaluation's values
    "reference_reward": "reference_reward",
    "reference_reward_std": "reference_reward_std",
    "policy_reward": "reward",
    "policy_reward_std": "reward_std",
    "policy_kl": "kl_reverse",
}


class OracleRewardReport(SamplingEvaluation):
    """Samples from reference and policy on held-out prompts at the end of training and scores them with the
    oracle: :class:`~lit_align.eval.SamplingEvaluation` once, at the end, with the task's reward.

    ``self.results``: ``reference_reward`` and ``policy_reward`` (mean oracle reward of the samples), their
    standard deviations, ``policy_kl`` (the evaluation's ``kl_reverse``) and ``heldout_reward_accuracy`` (the
    last value of ``accuracy_key`` in ``trainer.callback_metrics``, when validation ran). The evaluation's full
    values are logged under ``task/`` and kept in ``self.history``.

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
        super().__init__(every_n_steps=None, reward_fn=SentimentOracle(), prompts_path=prompts_path,
                         num_prompts=num_prompts, samples_per_prompt=samples_per_prompt,
                         max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size, seed=seed,
                         pairs=False, at_start=False, prefix="task")
        self.accuracy_key = accuracy_key
        self.results: dict[str, float] = {}

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        values = super().evaluate(trainer, pl_module)
        self.results = {name: values[key] for name, key in _RESULTS.items()}
        accuracy = trainer.callback_metrics.get(self.accuracy_key)
        if accuracy is not None:
            self.results["heldout_reward_accuracy"] = float(accuracy)
        rank_zero_info(self.describe())
        return values

    def describe(self, num_prompts: int | None = None) -> str:
        """The report as a few lines of text."""
        r = self.results
        where = f"{num_prompts} held-out prompts" if num_prompts is not None else "held-out prompts"
        lines = [
            f"Oracle reward of samples on {where} ({self.samples_per_prompt} per prompt):",
            f"  SFT reference   {r['reference_reward']:.3f} ± {r['reference_reward_std']:.3f}",
            f"  aligned policy  {r['policy_reward']:.3f} ± {r['policy_reward_std']:.3f}   "
            f"({r['policy_reward'] - r['reference_reward']:+.3f}, KL(π‖π_ref) ≈ {r['policy_kl']:.2f} nats)",
        ]
        if "heldout_reward_accuracy" in r:
            lines.append(f"  held-out implicit-reward accuracy {r['heldout_reward_accuracy']:.3f}")
        return "\n".join(lines)
