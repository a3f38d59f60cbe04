"""``SaveAdapter``: a LoRA policy's adapter written alone, in peft's format, when training ends.

A run's Lightning checkpoints stay complete (the frozen base included), so a resume never depends on the base
still being where it was; the adapter is what one shares, and ``tools/merge_lora.py`` folds it into the base.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from peft import PeftModel
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict


class SaveAdapter(Callback):
    """At the end of ``fit``, write the policy's LoRA adapter (``adapter_config.json`` and
    ``adapter_model.safetensors``, nothing of the base) with peft's ``save_pretrained``, and log where.

    The adapter's ``base_model_name_or_path`` is the policy's path made absolute when it is local
    (:class:`~lit_align.models.policy.PolicySpec`), so ``tools/merge_lora.py`` finds the base from any directory.

    Under a sharding strategy the adapter's weights are gathered first; the first process writes them.

    Args:
        dirpath: where to write; default ``adapter/`` in the run's log directory (or ``default_root_dir``).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if pl_module.policy_spec.lora is None:
            raise ValueError("SaveAdapter writes a LoRA adapter: set model.policy.lora, or drop the callback")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        policy: PeftModel = pl_module.policy
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(trainer.strategy.model, options=options)  # collective when sharded
        target = self.target(trainer)  # collective too (trainer.log_dir)
        if trainer.is_global_zero:
            adapter = {name.removeprefix("policy."): value for name, value in state.items() if "lora_" in name}
            policy.save_pretrained(target, state_dict=adapter, safe_serialization=True)
            base = policy.peft_config["default"].base_model_name_or_path
            rank_zero_info(f"LoRA adapter written to {target.resolve()} (base model: {base})")
        trainer.strategy.barrier("SaveAdapter")

    def target(self, trainer: L.Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "adapter"
