"""``AlignmentModule``: a policy, a reference and an objective — nothing else.

The data path reads as one line: batch → policy hidden states → what the objective needs (response
log-probs, the reference's, token-level KL) → objective → loss and metrics. The module does not know which
objective it runs, and the objective does not know it is inside Lightning.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import lightning as L
from jsonargparse.typing import PositiveInt
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh

from lit_align.errors import ConfigError
from lit_align.hyperparameters import save_plain_hyperparameters
from lit_align.metrics import MetricBank, log_pair_metrics
from lit_align.models.compiling import compile_decoder_layers
from lit_align.models.layout import decoder_inputs, packed_view, padded_view, response_states, takes_packing
from lit_align.models.loading import UnitLoader, is_empty
from lit_align.models.policy import PolicySpec, build_policy, final_hidden, lm_head
from lit_align.models.sharding import FSDPMixedPrecision, shard_and_load, wrap_frozen_fsdp1
from lit_align.objectives.base import Need, Objective, ObjectiveOutput, PreferenceInputs
from lit_align.preference_inputs import pair_inputs
from lit_align.reference import FrozenCopy, OnlineReference, ReferenceProvider
from lit_align.reference.default import default_reference
from lit_align.reference.precompute import reference_columns
from lit_align.schedule import Schedule, default_optimizer, optimization
from lit_align.validation import check_vocabulary, require_counts


class AlignmentModule(L.LightningModule):
    """Aligns ``policy`` with ``objective`` against ``reference``.

    Args:
        objective: any :class:`~lit_align.objectives.Objective` (``class_path`` in YAML).
        policy: where the policy comes from (path or config, dtype, checkpointing, LoRA).
        reference: a :class:`~lit_align.reference.ReferenceProvider`; unset picks the adapter-disabled base
            for a LoRA policy and a frozen copy otherwise. Objectives that need no reference get none.
        optimizer: optimizer factory over the trainable parameters (default AdamW, lr 5e-6, weight decay 0; a
            YAML ``class_path: torch.optim.AdamW`` should name ``weight_decay: 0.0``, as torch's own default is 0.01).
        lr_scheduler: any scheduler factory (instead of ``schedule``), stepped every optimizer step.
        schedule: the learning-rate schedule (:class:`~lit_align.schedule.Schedule`: linear warmup, then cosine,
            linear or constant, sized from the run's length); with neither, the optimizer's ``lr`` stays constant.
        disable_dropout: zero every dropout of the policy (as DPO implementations do), so that policy and
            reference see the same function at step 0.
        logits_chunk_size: response positions per LM-head call.
        packing: run each pair as one sequence ``[prompt | chosen | rejected]``, the batch's pairs packed into
            rows without padding between them, so every prompt is computed once (:mod:`lit_align.models.layout`); the
            per-pair results equal the padded layout's. A model family or attention backend that cannot take the
            packed mask runs padded, saying so once; so does an SAE extractor whose pooling divides by the padded
            length (``SAEFeatures(pooling="padded_shifted")``).
        mixed_precision: FSDP2's mixed precision (:class:`~lit_align.models.sharding.FSDPMixedPrecision`: bf16
            all-gather and compute, fp32 gradient reduction and master weights); FSDP2 only (FSDP1 takes
            ``trainer.strategy.init_args.mixed_precision``, other strategies ``trainer.precision``).
        compile: ``torch.compile`` each decoder layer of the policy and of the reference's own model, with dynamic
            shapes (:mod:`lit_align.models.compiling`); the first steps pay the compile time. Not under FSDP1.
    """

    def __init__(
        self,
        objective: Objective,
        policy: PolicySpec,
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
        super().__init__()
        require_counts(**{"model.logits_chunk_size": logits_chunk_size})
        save_plain_hyperparameters(self, inspect.currentframe())
        if schedule is not None and lr_scheduler is not None:
            raise ValueError("set model.schedule or model.lr_scheduler, not both")
        self.objective = objective
        self.policy_spec = policy
        if objective.needs and reference is None:
            reference = default_reference(policy)
        self.reference = reference if objective.needs else None
        if self.reference is not None:
            self.reference.check(objective.needs, type(objective).__name__)
            self.reference.bind_policy_spec(policy)
        self.feature_extractor = objective.feature_extractor()
        self.optimizer_factory = optimizer
        self.schedule = schedule
        self.scheduler_factory = lr_scheduler
        self.disable_dropout = disable_dropout
        self.logits_chunk_size = logits_chunk_size
        self.packing = packing
        self._packs: dict[int, bool] = {}
        self.mixed_precision = mixed_precision
        self.compile_layers = compile  # not self.compile: that is nn.Module's method
        self.policy: nn.Module | None = None
        self.train_metrics = MetricBank()
        self.val_metrics = MetricBank()

    def configure_model(self) -> None:
        """Build the policy (here, so a strategy can shard it) and attach the reference to it."""
        if self.policy is not None:
            return
        if self.policy_spec.quantization is not None and (self.device_mesh is not None or self._fsdp1()):
            raise ConfigError("model.policy.quantization", self.policy_spec.quantization, "one process or DDP: "
                              "FSDP cannot shard bitsandbytes' 4- and 8-bit weights as lit-align builds them")
        self.policy = build_policy(self.policy_spec, empty=self._loads_after_sharding()).train()
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if getattr(datamodule, "tokenizer", None) is not None:
            check_vocabulary(datamodule.tokenizer, self.policy.get_input_embeddings().weight.shape[0])
        if self.disable_dropout:
            for layer in self.policy.modules():
                if isinstance(layer, nn.Dropout):
                    layer.p = 0.0
        if self.feature_extractor is not None:
            self.feature_extractor.bind(self.policy)
        if self.reference is not None:
            self.reference.attach(self.policy, datamodule)
            if self.feature_extractor is not None:
                self.reference.attach_features(self.feature_extractor)
        if self.mixed_precision is not None and self.device_mesh is None:
            raise ConfigError("model.mixed_precision", self.mixed_precision,
                              f"FSDP2's setting (ModelParallelStrategy), not {type(self.trainer.strategy).__name__}'s: "
                              "set --model.mixed_precision=null (mixed precision: --trainer.precision=bf16-mixed) "
                              "or, under FSDPStrategy, trainer.strategy.init_args.mixed_precision")
        if self.device_mesh is not None:
            self._shard(self.device_mesh)
        elif self._fsdp1():  # the strategy wraps the policy, reading an empty one's weights unit by unit
            if is_empty(self.policy):
                self.trainer.strategy.kwargs["param_init_fn"] = UnitLoader(self.policy)
            if self.reference is not None:  # but not the reference
                self.reference.shard(wrap_frozen_fsdp1)
        if self.compile_layers:
            if self._fsdp1():
                raise ConfigError("model.compile", True, "FSDPStrategy (FSDP1) wraps the layers into flat parameters "
                                  "after they would be compiled: compile under ModelParallelStrategy (FSDP2) or DDP")
            compile_decoder_layers(self.policy, self.reference.own_model() if self.reference is not None else None)

    def _fsdp1(self) -> bool:
        return self._trainer is not None and isinstance(self.trainer.strategy, FSDPStrategy)

    def _loads_after_sharding(self) -> bool:
        """Whether the policy is built empty and read once sharded (``models/loading.py``): under FSDP2 and FSDP1, for
        a full fine-tune whose reference, if any, is a frozen copy (a LoRA adapter needs a loaded base)."""
        sharded = self.device_mesh is not None or self._fsdp1()
        return sharded and not self.policy_spec.adapted and isinstance(self.reference, FrozenCopy | None)

    def _shard(self, mesh: DeviceMesh) -> None:
        """FSDP2 over the data-parallel dimension of ``ModelParallelStrategy``'s mesh: the policy, and the
        reference's own model when it holds one (sharded, yet still outside the state dict)."""
        if mesh["tensor_parallel"].size() != 1:
            raise ValueError("AlignmentModule shards with FSDP2 only: set ModelParallelStrategy(tensor_parallel_size=1,"
                             " data_parallel_size=<nodes × devices>)")
        if self.feature_extractor is not None and isinstance(self.reference, OnlineReference):
            raise ValueError("the reference's SAE features stop its forward part-way, which FSDP2 cannot shard; "
                             "precompute them into an OfflineStore (lit-align precompute, on DDP) and train from it")
        shard = partial(shard_and_load, mesh=mesh["data_parallel"], mixed_precision=self.mixed_precision,
                        device=self.trainer.strategy.root_device)
        shard(self.policy)
        if self.reference is not None:
            self.reference.shard(shard)

    def reference_model(self) -> AbstractContextManager[nn.Module]:
        """A context yielding the reference as a causal LM that can ``generate`` (an online reference only)."""
        if not isinstance(self.reference, OnlineReference):
            raise ValueError(f"{type(self.reference).__name__} holds no reference model to sample from; evaluate "
                             "with an online reference (FrozenCopy, or DisabledAdapter with a LoRA policy)")
        return self.reference.generation_model()

    def forward(self, batch: dict[str, Tensor]) -> ObjectiveOutput:
        return self.objective(self.preference_inputs(batch))

    def preference_inputs(self, batch: dict[str, Tensor], also: frozenset[Need] = frozenset()) -> PreferenceInputs:
        """Compute, for one batch, exactly the quantities the objective needs (and those in ``also``, as the
        evaluation of held-out pairs asks for ``token_kl``): :func:`lit_align.preference_inputs.pair_inputs`."""
        needs = self.objective.needs | also
        batch = self.pair_view(batch)
        hidden, features = self._policy_hidden(batch)
        inputs = pair_inputs(batch, needs, hidden, lm_head(self.policy), self.reference, self.logits_chunk_size)
        if features is not None:
            inputs.policy_chosen_features, inputs.policy_rejected_features = features.chunk(2)
            ref_features = self.reference.sae_features(batch, self.feature_extractor)
            inputs.ref_chosen_features, inputs.ref_rejected_features = ref_features.chunk(2)
        return inputs

    def _policy_hidden(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """The policy's final hidden states and, when the objective reads SAE features, its response-pooled
        features, from the residual stream captured at the SAE's layer in the same forward (with gradient)."""
        inputs = decoder_inputs(batch, self.policy)
        if self.feature_extractor is None:
            return response_states(batch, final_hidden(self.policy, **inputs)), None
        with self.feature_extractor.capture(self.policy) as capture:
            hidden = final_hidden(self.policy, **inputs)
        read = response_states(batch, self.feature_extractor.read(capture, hidden))
        return response_states(batch, hidden), self.feature_extractor.encode(read, batch["response_mask"])

    def on_fit_start(self) -> None:
        """Decide the layout once: the data module builds only that one while fitting (``models/layout.py``)."""
        if hasattr(self.trainer.datamodule, "layout"):
            self.trainer.datamodule.layout = "packed" if self._runs_packed() else "padded"

    def on_fit_end(self) -> None:
        if hasattr(self.trainer.datamodule, "layout"):
            self.trainer.datamodule.layout = None  # both again, for whoever reads its loaders next

    def pair_view(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``batch`` in the layout this run uses: packed where policy and reference take it, else padded."""
        if "packed" not in batch:
            return batch
        packed = "input_ids" not in batch or self._runs_packed()
        return packed_view(batch, self.policy) if packed else padded_view(batch)

    def _runs_packed(self) -> bool:
        key = id(self.reference)  # precompute swaps the store for its source
        if key not in self._packs:
            reference = self.reference.own_model() if self.reference is not None else None
            packs = self.packing and (self.feature_extractor is None or self.feature_extractor.packs)
            self._packs[key] = packs and takes_packing(self.policy, reference)
        return self._packs[key]

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        inputs = self.preference_inputs(batch)
        output = self.objective(inputs)
        log_pair_metrics(self, "train", self.train_metrics, output, inputs)
        return output.loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        inputs = self.preference_inputs(batch)
        log_pair_metrics(self, "val", self.val_metrics, self.objective(inputs), inputs)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Reference log-probs of each pair, and its pooled SAE features when the objective reads them (sparse),
        for the offline store (see ``lit-align precompute``)."""
        return reference_columns(self.reference, self.pair_view(batch), self.feature_extractor)

    def configure_optimizers(self) -> Any:
        return optimization((p for p in self.policy.parameters() if p.requires_grad), self.optimizer_factory,
                            self.schedule, self.scheduler_factory, self.trainer.estimated_stepping_batches)
