"""``OnPolicyModule``: preference optimisation on pairs sampled from the current policy, with any objective.

Each training step takes a batch of prompts (:class:`~lit_align.online.prompts.PromptDataModule`) and

1. samples ``k = samples_per_prompt`` responses to each from the current policy, under ``no_grad`` with the KV cache
   (:func:`~lit_align.online.rollout.sample_responses`), seeded by ``(sampling_seed, global step, micro-batch,
   global rank)``;
2. scores them with ``reward_fn(prompts, responses)`` (:mod:`lit_align.online.reward`);
3. builds pairs from the rewards (:class:`~lit_align.online.PairBuilder`: best vs worst, or every pair above a
   margin) and batches their generated token ids with the preference collator;
4. trains on them exactly as :class:`~lit_align.module.AlignmentModule` trains on offline pairs: the objective's
   inputs from the policy and the reference (``FrozenCopy``, ``DisabledAdapter``), then its loss.

This is online DPO (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback",
https://arxiv.org/abs/2402.04792; TRL's ``OnlineDPOTrainer``) and the on-policy sampling of iterative DPO
(Xiong et al. 2024, https://arxiv.org/abs/2312.11456; Dong et al. 2024, https://arxiv.org/abs/2405.07863), with the
objective left open: f-DPO's divergences, TDPO's token-level KL, FPO's SAE features, SimPO, mixtures.

With ``iterative: true`` the module samples a whole round's pairs first, then trains on them (iterative DPO,
:mod:`lit_align.online.rounds`): a round is an epoch, whose dataloader the data module builds from
:meth:`OnPolicyModule.round_pairs`.

A step whose prompts give no pair (all ties, or all within the margin) is counted and skipped: no optimizer update.
Under DDP every process runs the same collectives: a process without pairs trains on a stand-in pair with zero
weight, and a step without pairs on any process drops its gradients before the optimizer sees them. A resumed run
samples what the uninterrupted run sampled (the seed depends on nothing but the counters the checkpoint restores,
and the prompts come in the data module's saved order), so it reaches the same weights on the same processes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
from jsonargparse.typing import PositiveFloat, PositiveInt
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from lit_align.data.collator import PairCollator
from lit_align.errors import ConfigError
from lit_align.metrics import MetricBank, log_pair_metrics, pair_metrics
from lit_align.models.policy import PolicySpec
from lit_align.models.sharding import FSDPMixedPrecision
from lit_align.module import AlignmentModule
from lit_align.objectives.base import Objective
from lit_align.online.pairs import PairBuilder, ScoredPairs
from lit_align.online.prompts import prompt_ids
from lit_align.online.reward import RewardFn, checked_rewards
from lit_align.online.rollout import Rollout, sample_responses, step_seed, token_pairs
from lit_align.online.rounds import SampledRound, sample_round
from lit_align.reference import OfflineStore, ReferenceProvider
from lit_align.schedule import Schedule, default_optimizer

STAND_IN = ScoredPairs(*(torch.tensor([i]) for i in (0, 0, 1)), torch.tensor([0.0]))
"""Prompt 0's first two responses: the zero-weight pair of a process without pairs under DDP."""


class OnPolicyModule(AlignmentModule):
    """:class:`~lit_align.module.AlignmentModule` on pairs it samples, scores and builds itself (module docstring).

    Args:
        objective, policy, reference, optimizer, lr_scheduler, schedule, disable_dropout, logits_chunk_size,
            packing, mixed_precision, compile: as for :class:`~lit_align.module.AlignmentModule`; the reference is
            an online one (the offline store is refused: its pairs would have to exist before training).
        reward_fn: any :class:`~lit_align.online.RewardFn` (``class_path`` in YAML), e.g. the controlled task's
            oracle ``lit_align.tasks.SentimentOracle`` or ``lit_align.online.SequenceClassifierReward``.
        samples_per_prompt: responses sampled per prompt, ``k ≥ 2``.
        pairs: how pairs are built from the rewards (``{rule: best_vs_worst | all_above_margin, margin: m}``).
        max_new_tokens: longest response, in tokens (a longer one is cut and trained without an end of turn).
        temperature: sampling temperature (ancestral sampling, no top-k/top-p).
        sampling_seed: each micro-batch samples under ``(sampling_seed, global step, batch index, global rank)``
            (its own name: the data module's ``seed`` orders the prompts).
        generation_batch_size: prompt-sample rows per ``generate`` call; unset, all of a batch's ``B·k`` rows.
        iterative: sample each epoch's pairs at its start (a round), then train on them, ``data.batch_size`` pairs a
            step, instead of sampling afresh every step; needs ``trainer.reload_dataloaders_every_n_epochs: 1``.
    """

    def __init__(
        self,
        objective: Objective,
        policy: PolicySpec,
        reward_fn: RewardFn,
        samples_per_prompt: PositiveInt = 2,
        pairs: PairBuilder | None = None,
        max_new_tokens: PositiveInt = 64,
        temperature: PositiveFloat = 1.0,
        sampling_seed: int = 0,
        generation_batch_size: PositiveInt | None = None,
        iterative: bool = False,
        reference: ReferenceProvider | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        schedule: Schedule | None = None,
        disable_dropout: bool = True,
        logits_chunk_size: PositiveInt = 4096,
        packing: bool = True,
        mixed_precision: FSDPMixedPrecision | None = None,
        compile: bool = False,
    ) -> None:
        if isinstance(reference, OfflineStore):
            raise ConfigError("model.reference", type(reference).__name__, "FrozenCopy or DisabledAdapter (or unset): "
                              "on-policy pairs are sampled during training, so no store holds their reference "
                              "log-probs in advance")
        if samples_per_prompt < 2:
            raise ConfigError("model.samples_per_prompt", samples_per_prompt, "k >= 2 responses per prompt make a pair")
        if not temperature > 0 or max_new_tokens < 1 or (generation_batch_size or 1) < 1:
            raise ConfigError("model.temperature/max_new_tokens/generation_batch_size",
                              (temperature, max_new_tokens, generation_batch_size), "temperature > 0 and counts >= 1")
        if not callable(reward_fn):
            raise ConfigError("model.reward_fn", reward_fn, "reward_fn(prompts, responses) -> Tensor")
        super().__init__(objective, policy, reference, optimizer, lr_scheduler, schedule, disable_dropout,
                         logits_chunk_size, packing, mixed_precision, compile)
        object.__setattr__(self, "reward_fn", reward_fn)  # not a submodule: a reward model stays out of checkpoints
        self.pair_builder = pairs or PairBuilder()
        self.samples_per_prompt = samples_per_prompt
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.sampling_seed = sampling_seed
        self.generation_batch_size = generation_batch_size
        self.iterative = iterative
        self.round: SampledRound | None = None
        """The current round's pairs (iterative mode; saved in checkpoints)."""
        self.online_metrics = MetricBank()
        self.skipped_steps = 0
        """Optimizer steps skipped because no process had a pair (saved in checkpoints)."""
        self._step_pairs = 0
        self.clock: dict[str, float] = {}
        """The current micro-batch's times: its start, ``generate`` and ``score`` seconds, and ``samples``."""

    def setup(self, stage: str) -> None:
        reload = self.trainer.reload_dataloaders_every_n_epochs
        if self.iterative and stage == "fit" and reload != 1:
            raise ConfigError("trainer.reload_dataloaders_every_n_epochs", reload, "1 with model.iterative: each "
                              "round's pairs are sampled when its epoch's dataloader is built")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._place_reward()

    def _place_reward(self) -> None:
        """The reward function on the policy's device, when it has one to be moved to."""
        if callable(getattr(self.reward_fn, "to", None)):
            self.reward_fn.to(self.device)

    def rollout(self, batch: dict[str, Any], seed: int) -> tuple[Rollout, Tensor]:
        """Sample ``k`` responses to each prompt of ``batch`` under ``seed`` and score them: the rollout and its
        rewards ``(B, k)`` (float64, on the CPU)."""
        datamodule, k = self.trainer.datamodule, self.samples_per_prompt
        rows = len(batch["input_ids"]) * k
        start = time.perf_counter()
        rollout = sample_responses(
            self.policy, datamodule.tokenizer, batch["input_ids"], batch["attention_mask"], samples_per_prompt=k,
            max_new_tokens=self.max_new_tokens, temperature=self.temperature,
            batch_size=self.generation_batch_size or rows, pad_token_id=datamodule.pad_token_id,
            seed=seed)
        scored = time.perf_counter()
        prompts = [text for text in batch["prompt_text"] for _ in range(k)]
        rewards = checked_rewards(self.reward_fn(prompts, rollout.texts), rows, self.reward_fn)
        self.clock.update(generate=scored - start, score=time.perf_counter() - scored, samples=rows)
        return rollout, rewards.cpu().double().reshape(-1, k)

    def pair_batch(self, batch: dict[str, Any], rollout: Rollout, pairs: ScoredPairs) -> dict[str, Any]:
        """``pairs`` of ``rollout`` collated as the preference data module collates offline pairs, on the device."""
        layout = "packed" if self._runs_packed() else "padded"
        row_tokens = getattr(self.trainer.datamodule, "hparams", {}).get("pack_row_tokens", 512)
        collate = PairCollator(self.trainer.datamodule.pad_token_id, row_tokens=row_tokens, layout=layout)
        return move_data_to_device(collate(token_pairs(prompt_ids(batch), rollout, pairs)), self.device)

    def round_pairs(self, prompts: Iterable[dict[str, Any]], index: int) -> list[dict[str, Any]]:
        """Round ``index``'s pairs, all processes': sampled from ``prompts`` (this process's batches of the epoch),
        or the checkpoint's when a run resumes inside that round (or the checkpoint's later round: Lightning asks
        for epoch 0's dataloader to count the run's steps before it restores the loop's epoch)."""
        if self.round is None or self.round.index < index:
            self._place_reward()
            self.round = sample_round(self, prompts, index)
        return self.round.pairs

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        if self.iterative:
            return super().training_step(batch, batch_idx)  # the round's pairs, as offline
        seed = step_seed(self.sampling_seed, self.global_step, batch_idx, self.global_rank)
        rollout, rewards = self.rollout(batch, seed)
        pairs = self.pair_builder(rewards)
        found = len(pairs)
        if self.trainer.world_size > 1:
            found = int(self.trainer.strategy.reduce(torch.tensor(float(found), device=self.device), reduce_op="sum"))
        self._step_pairs += found
        self._log_online({"reward": rewards.flatten(), "pairs": torch.tensor([float(len(pairs))]),
                          "pair_gap": pairs.gap.double(), "ended": rollout.ended.double(),
                          "response_tokens": rollout.lengths.double()}, len(rewards))
        if not len(pairs) and self.trainer.world_size == 1:
            return None  # nothing to train on: the optimizer step that ends this micro-batch's step is skipped
        inputs = self.preference_inputs(self.pair_batch(batch, rollout, pairs if len(pairs) else STAND_IN))
        output = self.objective(inputs)
        if len(pairs):
            log_pair_metrics(self, "train", self.train_metrics, output, inputs)
            return output.loss
        values = pair_metrics(output, inputs.policy_chosen_logps, inputs.policy_rejected_logps)
        for name, (metric, attribute) in self.train_metrics({k: v * torch.nan for k, v in values.items()}).items():
            self.log(f"train/{name}", metric, metric_attribute=f"train_metrics.{attribute}", on_step=True,
                     on_epoch=True, prog_bar=name in ("loss", "rewards/accuracies"), batch_size=1)  # as logged
        return output.loss * 0.0  # the stand-in pair: its gradient is zero, the collectives the same as elsewhere

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip a step without a pair on any process: its gradients (zero, or none) are dropped, so the optimizer
        leaves weights and state as they were."""
        if self._step_pairs == 0 and not self.iterative:
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    parameter.grad = None
            self.skipped_steps += 1
        self._step_pairs = 0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.clock = {"start": time.perf_counter()}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log the micro-batch's time split (generate, score, train: forward, backward and any optimizer step),
        samples per second, and the skipped steps so far."""
        if "samples" not in self.clock:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        total = time.perf_counter() - self.clock["start"]
        split = {name: self.clock[name] for name in ("generate", "score")}
        split["train"] = total - split["generate"] - split["score"]
        values = {f"time/{name}": torch.tensor([seconds]) for name, seconds in split.items()}
        values["samples_per_second"] = torch.tensor([self.clock["samples"] / total])
        self._log_online(values, 1)
        self.log("online/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False, batch_size=1)

    def _log_online(self, values: dict[str, Tensor], batch_size: int) -> None:
        values = {name: (value if value.numel() else torch.tensor([torch.nan])).to(self.device, torch.float32)
                  for name, value in values.items()}  # an empty value (no pair, no gap) is a NaN, left out of means
        for name, (metric, attribute) in self.online_metrics(values).items():
            self.log(f"online/{name}", metric, metric_attribute=f"online_metrics.{attribute}", on_step=True,
                     on_epoch=True, prog_bar=name == "reward", batch_size=batch_size)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["on_policy"] = {"skipped_steps": self.skipped_steps}
        if self.round is not None:
            checkpoint["on_policy"]["round"] = self.round.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("on_policy", {})
        self.skipped_steps = state.get("skipped_steps", 0)
        self.round = SampledRound.from_state_dict(state["round"]) if "round" in state else None
