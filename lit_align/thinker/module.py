"""``LatentThoughtModule``: a frozen base LLM, a thought generator and a projection, trained with the
LTA-Thinker losses (Wang et al. 2025, https://arxiv.org/abs/2509.12875).

The data path: generator prompt → generator hidden states ``h`` → projection ``P = W h + b`` (in the base's
embedding space) → the N thought vectors replace the N placeholder embeddings of the base prompt → the base's
logits → :class:`~lit_align.thinker.losses.ThoughtLoss` (answer NLL, alignment KL, reasoning-focus InfoNCE).

Two switches reproduce or fix the authors' defects: ``gold_steps_in_prompt`` (their training prompt holds the gold
steps, which usually contain the answer, while at test time the generator sees only the question: a leak) and the
generator's ``positional`` (without it, :class:`~lit_align.thinker.generator.BlockPrior` gives the anchor and every
step end — the same token — the same vector, so ``L_focus`` is the constant ``ln S`` with zero gradient). With
``gold_steps_in_prompt=False`` the thoughts come from the question-only prompt, in training as at test time,
and ``L_focus`` reads the step vectors from a separate pass over the steps that feeds no thought.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lit_align.hyperparameters import save_plain_hyperparameters
from lit_align.models.policy import PolicySpec, build_policy
from lit_align.schedule import AdamW
from lit_align.thinker.generator import BlockPrior, GaussianThoughts, ThoughtGenerator
from lit_align.thinker.injection import ThoughtMode, control, gather_positions, inject
from lit_align.thinker.losses import ThoughtLoss, ThoughtTerms, answer_nll


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    return AdamW(params, lr=1e-3, weight_decay=0.0)  # fused where torch has the kernel


class LatentThoughtModule(L.LightningModule):
    """Trains a thought generator and projection for a frozen base.

    Args:
        base: the base LLM (frozen; with ``lora`` set, its LoRA adapter trains too, as the authors'
            ``tune_base_model``).
        generator: :class:`~lit_align.thinker.generator.BlockPrior` (default) or
            :class:`~lit_align.thinker.generator.AssistantLM`; :class:`~lit_align.thinker.controls.NoGenerator`
            is the trained-placeholder control (slot vectors that no question changes).
        loss: the weighted losses (default: the authors' 0.33 each).
        gold_steps_in_prompt: the authors' training prompt (gold steps before the thought queries) or the
            leak-free one (the question only, as at test time).
        variance_prior: an optional :class:`~lit_align.thinker.generator.GaussianThoughts` (sampled thoughts).
        train_generator: train the generator (False: the projection only).
        thoughts: ``generated``, or a control for evaluation (``placeholder``, ``shuffled``).
        thought_init: ``random`` (the authors': a default ``nn.Linear``) or ``placeholder``: at the first training
            batch the projection's bias becomes the placeholder token's embedding and its weight is scaled by 0.1,
            so training starts from (nearly) the placeholder prompt instead of random vectors in the slots.
        optimizer: optimizer factory over the trainable parameters.
    """

    def __init__(
        self,
        base: PolicySpec,
        generator: ThoughtGenerator | None = None,
        loss: ThoughtLoss | None = None,
        gold_steps_in_prompt: bool = True,
        variance_prior: GaussianThoughts | None = None,
        train_generator: bool = True,
        thoughts: ThoughtMode = "generated",
        thought_init: Literal["random", "placeholder"] = "random",
        optimizer: OptimizerCallable = default_optimizer,
    ) -> None:
        super().__init__()
        save_plain_hyperparameters(self, inspect.currentframe())
        self.base_spec = base
        self.generator = generator or BlockPrior()
        self.loss = loss or ThoughtLoss()
        self.gold_steps_in_prompt = gold_steps_in_prompt
        self.variance_prior = variance_prior
        self.train_generator = train_generator
        self.thoughts = thoughts
        self.thought_init = thought_init
        self.register_buffer("initialised", torch.tensor(thought_init == "random"))
        self.optimizer_factory = optimizer
        self.base: nn.Module | None = None
        self.projection: nn.Linear | None = None

    def configure_model(self) -> None:
        """Build the frozen base, then the generator, projection and prior against it."""
        if self.base is not None:
            return
        self.base = build_policy(self.base_spec)
        if not self.base_spec.adapted:
            self.base.requires_grad_(False)
        for layer in self.base.modules():
            if isinstance(layer, nn.Dropout):
                layer.p = 0.0
        self.generator.bind(self.base)
        if not self.train_generator:
            self.generator.requires_grad_(False)
        self.projection = nn.Linear(self.generator.hidden_size, self.base.config.hidden_size)
        if self.variance_prior is not None:
            self.variance_prior.bind(self.generator.hidden_size)

    def generate_thoughts(self, ids: Tensor, mask: Tensor, slots: Tensor, sample: bool) -> tuple[Tensor, ...]:
        """``(P, thoughts, logvar)``: the projected generator outputs at every position, the projected thoughts
        (sampled from the prior when it is set and ``sample``) and their log-variance (or None)."""
        hidden = self.generator(ids, mask)
        thought_hidden, logvar = gather_positions(hidden, slots), None
        if self.variance_prior is not None and sample:
            thought_hidden, logvar = self.variance_prior(thought_hidden)
        return self.projection(hidden), self.projection(thought_hidden), logvar

    def base_embeddings(self, ids: Tensor, slots: Tensor, thoughts: Tensor, shift: int = 1) -> Tensor:
        """The base's input embeddings of ``ids`` with the thoughts (or a control, see ``thoughts``) injected."""
        embeddings = self.base.get_input_embeddings()(ids)
        injected = control(thoughts, self.thoughts, shift)
        return embeddings if injected is None else inject(embeddings, slots, injected)

    def forward(self, batch: dict[str, Tensor]) -> ThoughtTerms:
        """What the losses read. In training with ``gold_steps_in_prompt`` the generator reads the gold steps;
        otherwise (and always in evaluation) the question only."""
        steps_pass = self.gold_steps_in_prompt and self.training
        prefix = "gen_steps" if steps_pass else "gen"
        projected, thoughts, logvar = self.generate_thoughts(
            batch[f"{prefix}_ids"], batch[f"{prefix}_mask"], batch[f"{prefix}_slots"], sample=self.training
        )
        steps = None
        if self.training and self.loss.needs_steps():
            if not steps_pass:
                projected_steps = self.projection(self.generator(batch["gen_steps_ids"], batch["gen_steps_mask"]))
            steps = gather_positions(projected if steps_pass else projected_steps, batch["step_ends"])
        embeddings = self.base_embeddings(batch["input_ids"], batch["thought_slots"], thoughts)
        logits = self.base(inputs_embeds=embeddings, attention_mask=batch["attention_mask"]).logits
        answer_mask = batch["answer_mask"][..., None].to(embeddings.dtype)
        answer = (self.base.get_input_embeddings()(batch["answer_ids"]) * answer_mask).sum(1)
        return ThoughtTerms(
            logits, batch["labels"], gather_positions(projected, batch["q_end"]), thoughts, steps,
            batch["step_mask"], answer / answer_mask.sum(1).clamp(min=1), logvar,
        )

    def on_train_batch_start(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """``thought_init="placeholder"``: start the projection at the placeholder embedding (once; a resumed
        run keeps its trained projection, the flag being saved with it)."""
        if self.initialised:
            return
        placeholder = batch["input_ids"][0, batch["thought_slots"][0, 0]]
        with torch.no_grad():
            self.projection.bias.copy_(self.base.get_input_embeddings().weight[placeholder])
            self.projection.weight.mul_(0.1)
        self.initialised.fill_(True)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        output = self.loss(self(batch))
        size = len(batch["input_ids"])
        for name, value in output.parts.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=True, batch_size=size)
        self.log("train/loss", output.loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        return output.loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        terms = self(batch)
        nll, count = answer_nll(terms.logits, terms.labels)
        self.log("val/sft", nll.sum() / count.sum(), prog_bar=True, batch_size=len(nll))

    @torch.no_grad()
    def sample_answers(self, batch: dict[str, Tensor], k: int = 1, sample_thoughts: bool = False,
                       **generate_kwargs: Any) -> Tensor:
        """``k`` generations per example (rows ``b·k .. b·k + k − 1``), each with its own thought sample when the
        prior is set and ``sample_thoughts``; the thoughts come from the question only. Returns the new ids."""
        def repeat(key: str) -> Tensor:
            return batch[key].repeat_interleave(k, 0)

        _, thoughts, _ = self.generate_thoughts(repeat("gen_ids"), repeat("gen_mask"), repeat("gen_slots"),
                                                sample=sample_thoughts)
        embeddings = self.base_embeddings(repeat("prompt_ids"), repeat("prompt_slots"), thoughts, shift=k)
        return self.base.generate(inputs_embeds=embeddings, attention_mask=repeat("prompt_mask"), **generate_kwargs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(p for p in self.parameters() if p.requires_grad)
