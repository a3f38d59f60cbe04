"""``SaveHFModel``: the policy written as a ``save_pretrained`` directory at the end of ``fit`` (and every N steps),
as ``lit-align export`` writes it from a checkpoint (:mod:`lit_align.export`), by the same rule: the directory ends
holding one model, written beside it and swapped in whole (:mod:`lit_align.atomic_dir`)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from peft import PeftModel
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from transformers import PreTrainedTokenizerBase

from lit_align.atomic_dir import target_refusal
from lit_align.errors import ConfigError
from lit_align.export import copy_policy_state, empty_policy, write_pretrained
from lit_align.models.adapters import base_changing_init
from lit_align.models.policy import DType


class SaveHFModel(Callback):
    """Write the trained policy for inference stacks: safetensors weights, config, generation config, tokenizer
    (``AutoModelForCausalLM.from_pretrained(dirpath)`` loads it). A LoRA policy writes its adapter alone (peft's
    ``adapter_config.json``, naming the base by absolute path when it is local, and ``adapter_model.safetensors``),
    or with ``merge`` the adapter folded into its base. Each save logs where it went.

    Under a sharding strategy each weight is gathered in turn to the first process, which alone holds the full
    model (``cpu_offload``) and writes it.

    The callback owns ``dirpath``: each save replaces the previous one whole (written beside, swapped in, so a
    crash leaves the previous save), and the final model keeps the ``step-<n>`` saves beside it. What is there
    before training starts is not its own: a ``dirpath`` that is a file, or that holds anything, is refused when
    ``fit`` starts, unless ``overwrite``.

    Args:
        dirpath: where to write; default ``hf_model/`` in the run's log directory (or ``default_root_dir``).
        every_n_train_steps: also write every this many optimizer steps, to ``<dirpath>/step-<n>``.
        merge: fold a LoRA adapter into the base.
        dtype: the written weights' dtype (default: as trained), e.g. ``bfloat16``.
        tokenizer: the tokenizer to write alongside; default the data module's (with its chat template), else
            the policy's path.
        overwrite: let this run's saves replace what ``dirpath`` holds when training starts (another run's).
    """

    def __init__(self, dirpath: str | None = None, every_n_train_steps: int | None = None, merge: bool = False,
                 dtype: DType | None = None, tokenizer: str | None = None, overwrite: bool = False) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ValueError(f"SaveHFModel(every_n_train_steps={every_n_train_steps}): give a positive step count")
        self.dirpath = dirpath
        self.every_n_train_steps = every_n_train_steps
        self.merge = merge
        self.dtype = dtype
        self.tokenizer = tokenizer
        self.overwrite = overwrite
        self._saved_step = 0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.merge and not pl_module.policy_spec.adapted:
            raise ValueError("SaveHFModel(merge=True) folds an adapter into its base: the policy has none")
        if not self.merge and (init := base_changing_init(pl_module.policy_spec.peft)) is not None:
            raise ConfigError("SaveHFModel.merge", False, f"merge=True: an adapter initialised with "
                              f"init_lora_weights={init!r} is relative to the base it changed")
        if stage == "fit":
            self._check_target(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step  # counts optimizer steps: unchanged over the micro-batches of one step
        if self.every_n_train_steps and step % self.every_n_train_steps == 0 and step != self._saved_step:
            self._saved_step = step
            self.save(trainer, pl_module, self.target(trainer) / f"step-{step}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer, pl_module, self.target(trainer))

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule, target: Path) -> None:
        """Gather the policy's weights to the first process and write them to ``target`` (a collective call)."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(trainer.strategy.model, options=options)  # collective when sharded
        if trainer.is_global_zero:
            spec = pl_module.policy_spec
            model = empty_policy(spec)
            copy_policy_state(model, state, adapter_only=spec.quantization is not None)
            run = getattr(getattr(trainer, "run_identity", None), "manifest", None)
            write_pretrained(model, target, self.tokenizer or self._data_tokenizer(trainer, pl_module),
                             self.merge, self.dtype, keep=_is_step_save, manifest=run)
            if isinstance(model, PeftModel) and not self.merge:
                base = model.peft_config["default"].base_model_name_or_path
                rank_zero_info(f"adapter written to {target.resolve()} (base model: {base})")
            else:
                rank_zero_info(f"model written to {target.resolve()}")
        trainer.strategy.barrier("SaveHFModel")

    def target(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "hf_model"

    def _check_target(self, trainer: L.Trainer) -> None:
        """Refuse a ``dirpath`` that is a file, or that holds something before this run wrote there (unless
        ``overwrite``), before the first step; the first process looks, every process raises."""
        target = self.target(trainer)  # collective (trainer.log_dir)
        refusal = None
        if trainer.is_global_zero:
            refusal = target_refusal(target, self.overwrite, "SaveHFModel(overwrite=True)")
        refusal = trainer.strategy.broadcast(refusal)
        if refusal is not None:
            raise ConfigError("SaveHFModel.dirpath", str(target), refusal)

    @staticmethod
    def _data_tokenizer(trainer: L.Trainer, pl_module: L.LightningModule) -> str | PreTrainedTokenizerBase | None:
        """The tokenizer the run trained with (the data module's, chat template included), else the policy's."""
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if isinstance(tokenizer, PreTrainedTokenizerBase):
            return tokenizer
        path = pl_module.policy_spec.path
        return path if path is not None and (Path(path) / "tokenizer_config.json").is_file() else None


def _is_step_save(entry: Path) -> bool:
    """An entry of ``dirpath`` that the final save keeps: a ``step-<n>`` save."""
    return entry.is_dir() and entry.name.startswith("step-") and entry.name.removeprefix("step-").isdigit()
