"""``RewardModel``: a reward model trained by lit-align on the same preference pairs as a policy.

A sequence-classification model with one output, ``r_φ(x, y)``, read at the last token that is not padding
(transformers' decoder heads), trained with the Bradley–Terry loss
``−log σ(r_φ(x, y_w) − r_φ(x, y_l))`` (:mod:`lit_align.online.bradley_terry`) on the batches of
:class:`~lit_align.data.PreferenceDataModule` (padded layout: chosen rows above rejected rows). Built from a
causal LM's directory — the SFT model a user already has — its decoder is read from that model and the score
head is new (:mod:`lit_align.online.classifier_spec`); a sequence-classification checkpoint is read whole.

Its metrics, torchmetrics means over micro-batches and processes as the alignment module's, are ``loss``,
``rewards/chosen``, ``rewards/rejected``, ``rewards/margins`` and ``rewards/accuracies`` (the fraction of pairs
with ``r(x, y_w) > r(x, y_l)``; on the validation pairs, the held-out accuracy), under ``train/`` and ``val/``.
:meth:`RewardModel.save_pretrained` (or ``save_dir``, at the end of ``fit``) writes it so that
:class:`~lit_align.online.SequenceClassifierReward` reads it back as a reward function, rendering prompts and
responses as the training pairs were (conversations through the chat template, or texts: recorded in its config).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_align.atomic_dir import target_refusal
from lit_align.errors import ConfigError
from lit_align.export import write_pretrained
from lit_align.hyperparameters import save_plain_hyperparameters
from lit_align.metrics import MetricBank
from lit_align.online.bradley_terry import bradley_terry_loss, check_center_coefficient
from lit_align.online.classifier_reward import TRAINED_TEMPLATE
from lit_align.online.classifier_spec import ClassifierSpec, build_classifier
from lit_align.schedule import Schedule, default_optimizer, optimization
from lit_align.validation import check_vocabulary


class RewardModel(L.LightningModule):
    """Trains ``r_φ`` on preference pairs with the Bradley–Terry loss.

    Args:
        classifier: where the model comes from (:class:`~lit_align.online.ClassifierSpec`): a causal LM's path (the
            SFT model), a sequence-classification model's, or a config.
        center_coefficient: ``η``, the weight of the reward-centring term (0: plain Bradley–Terry).
        optimizer: optimizer factory over the model's parameters (default AdamW, lr 5e-6, no weight decay).
        lr_scheduler: any scheduler factory (instead of ``schedule``), stepped every optimizer step.
        schedule: warmup then cosine, linear or constant (:class:`~lit_align.schedule.Schedule`).
        disable_dropout: zero every dropout, so a pair's rewards are the same at every step they are read.
        save_dir: where the trained model (with the data module's tokenizer) is written at the end of ``fit``.
        overwrite: let ``save_dir`` replace what it holds.
    """

    def __init__(
        self,
        classifier: ClassifierSpec,
        center_coefficient: float = 0.0,
        optimizer: OptimizerCallable = default_optimizer,
        lr_scheduler: LRSchedulerCallable | None = None,
        schedule: Schedule | None = None,
        disable_dropout: bool = True,
        save_dir: str | None = None,
        overwrite: bool = False,
    ) -> None:
        super().__init__()
        if schedule is not None and lr_scheduler is not None:
            raise ValueError("set model.schedule or model.lr_scheduler, not both")
        check_center_coefficient(center_coefficient)
        save_plain_hyperparameters(self, inspect.currentframe())
        self.classifier = classifier
        self.center_coefficient = center_coefficient
        self.optimizer_factory = optimizer
        self.schedule = schedule
        self.scheduler_factory = lr_scheduler
        self.disable_dropout = disable_dropout
        self.save_dir = save_dir
        self.overwrite = overwrite
        self.model: PreTrainedModel | None = None
        self.train_metrics = MetricBank()
        self.val_metrics = MetricBank()

    def setup(self, stage: str) -> None:
        """The data module builds its batches in the padded layout only (set before the optimizer's setup reads the
        training loader); before fitting, a ``save_dir`` that may not be written is refused."""
        if hasattr(self.trainer.datamodule, "layout"):
            self.trainer.datamodule.layout = "padded"
        if stage == "fit" and self.save_dir is not None and (
                refusal := target_refusal(self.save_dir, self.overwrite, "model.overwrite=true")) is not None:
            raise ConfigError("model.save_dir", self.save_dir, refusal)

    def teardown(self, stage: str) -> None:
        if hasattr(self.trainer.datamodule, "layout"):
            self.trainer.datamodule.layout = None  # both again, for whoever reads its loaders next

    def configure_model(self) -> None:
        """Build the classifier; its pad id is the data module's, so it reads each row where the collator ended
        it."""
        if self.model is not None:
            return
        if isinstance(getattr(self._trainer, "strategy", None), FSDPStrategy | ModelParallelStrategy):
            raise ConfigError("trainer.strategy", type(self.trainer.strategy).__name__, "the reward model trains on "
                              "one device or under DDP (strategy: ddp)")
        self.model = build_classifier(self.classifier)
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if getattr(datamodule, "tokenizer", None) is not None:
            check_vocabulary(datamodule.tokenizer, self.model.get_input_embeddings().weight.shape[0])
            self.model.config.pad_token_id = datamodule.pad_token_id
        if self.disable_dropout:
            for layer in self.model.modules():
                if isinstance(layer, nn.Dropout):
                    layer.p = 0.0

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """``r_φ`` of each row, ``(rows,)``."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]

    def pair_rewards(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(r(x, y_w), r(x, y_l))`` of a padded batch's pairs, each ``(batch,)``."""
        return self(batch["input_ids"], batch["attention_mask"]).chunk(2)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self._step("train", self.train_metrics, batch)
        return losses.mean()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step("val", self.val_metrics, batch)

    def _step(self, stage: str, bank: MetricBank, batch: dict[str, Tensor]) -> Tensor:
        losses, chosen, rejected = bradley_terry_loss(*self.pair_rewards(batch), self.center_coefficient)
        values = {"loss": losses.detach(), "rewards/chosen": chosen, "rewards/rejected": rejected,
                  "rewards/margins": chosen - rejected, "rewards/accuracies": (chosen > rejected).float()}
        for name, (metric, attribute) in bank(values).items():
            self.log(f"{stage}/{name}", metric, metric_attribute=f"{stage}_metrics.{attribute}",
                     on_step=stage == "train", on_epoch=True, prog_bar=name in ("loss", "rewards/accuracies"),
                     batch_size=len(losses))
        return losses

    def on_fit_end(self) -> None:
        datamodule = self.trainer.datamodule
        if self.save_dir is not None:
            if self.trainer.is_global_zero:
                tokenizer = getattr(datamodule, "tokenizer", None)
                self.save_pretrained(self.save_dir, tokenizer, trained_template(datamodule))
            self.trainer.strategy.barrier("RewardModel.save_pretrained")

    def save_pretrained(self, directory: str | Path, tokenizer: PreTrainedTokenizerBase | str | None = None,
                        template: Literal["chat", "text"] | None = None) -> Path:
        """Write the model (safetensors, ``num_labels: 1``, its pad id) and ``tokenizer`` to ``directory``,
        replacing it whole; :class:`~lit_align.online.SequenceClassifierReward` reads it back, rendering as
        ``template`` says the pairs were (recorded in the config; ``None`` records nothing)."""
        setattr(self.model.config, TRAINED_TEMPLATE, template)
        return write_pretrained(self.model, directory, tokenizer)

    def configure_optimizers(self) -> Any:
        return optimization((p for p in self.model.parameters() if p.requires_grad), self.optimizer_factory,
                            self.schedule, self.scheduler_factory, self.trainer.estimated_stepping_batches)


def trained_template(datamodule: Any) -> Literal["chat", "text"] | None:
    """How the data module's pairs were rendered: ``chat`` when every source was read as conversations, ``text``
    when none was; ``None`` when they were mixed, or unknown (a data module without a report)."""
    layouts = {layout for report in getattr(datamodule, "report", {}).values() for layout in report.get("layouts", {})}
    if not layouts:
        return None
    if layouts == {"conversational"}:
        return "chat"
    return "text" if "conversational" not in layouts else None
