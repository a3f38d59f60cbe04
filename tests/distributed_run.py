"""One small training run for the distributed tests.

Launched as ``python -m tests.distributed_run SPEC.json`` (Lightning starts the other local processes itself, or
the test starts one process per simulated node), or called in-process with :func:`run`. Each rank writes
``rank{r}.json`` (its per-step losses and example keys, and facts about a frozen-copy reference); rank 0 writes
the policy's full weights to ``policy.pt``, a LoRA run its adapter to ``adapter/`` (``SaveHFModel``), and with
``save_hf`` the SaveHFModel callback the policy to ``hf/``.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM

from lit_align.callbacks.save_hf import SaveHFModel
from lit_align.data import PreferenceDataModule
from lit_align.models.policy import LoraSettings, PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import FDPO
from lit_align.reference import FrozenCopy
from lit_align.reference.sync import ReferenceSync
from lit_align.trainer import AlignmentTrainer


class StepRecorder(Callback):
    """Each training step's loss and the example keys of its batch, on this rank."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.keys: list[list[int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].item())
        self.keys.append(batch["example_key"].tolist())


class KeysToFile(Callback):
    """Writes ``rank{r}.json`` into ``out`` at the end of training: the example keys of each step's batch on this
    rank, and where the rank sits (for runs launched through the CLI)."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.keys: list[list[int]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.keys.append(batch["example_key"].tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        facts = {"keys": self.keys, "world_size": trainer.world_size, "global_rank": trainer.global_rank,
                 "node_rank": trainer.node_rank, "train_keys": sorted(trainer.datamodule.train_set["example_key"])}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(facts))


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` on CPU, for tests: only its class differs, which lifts the GPU-only check of the
    Trainer's accelerator connector (it tests ``type(strategy) is FSDPStrategy``); and FSDP1 modules, which torch
    refuses to build on CPU unless a device is named, are built with ``device_id=cpu``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        build = FullyShardedDataParallel.__init__
        if not getattr(build, "on_cpu", False):
            def on_cpu(self, *args: Any, device_id: Any = None, **options: Any) -> None:
                build(self, *args, device_id=torch.device("cpu") if device_id is None else device_id, **options)

            on_cpu.on_cpu = True
            FullyShardedDataParallel.__init__ = on_cpu


def strategy(spec: dict[str, Any]) -> Any:
    processes = spec.get("devices", 1) * spec.get("num_nodes", 1)
    if spec["strategy"] == "fsdp2":
        return ModelParallelStrategy(data_parallel_size=processes, tensor_parallel_size=1)
    if spec["strategy"] == "fsdp":
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        layers = {LlamaDecoderLayer}
        return CPUFSDPStrategy(auto_wrap_policy=layers, activation_checkpointing_policy=layers,
                               state_dict_type="sharded")
    return spec["strategy"]


def run(spec: dict[str, Any]) -> AlignmentModule:
    out = Path(spec["out"])
    module = AlignmentModule(
        FDPO(beta=0.5),
        PolicySpec(path=spec["model"], gradient_checkpointing=spec.get("gradient_checkpointing", False),
                   lora=LoraSettings(r=4, alpha=8) if spec.get("lora") else None),
        # SGD: no adaptive step to magnify rounding; momentum, so that there is an optimizer state to save and load
        optimizer=partial(torch.optim.SGD, lr=spec.get("lr", 1.0), momentum=0.5),
        logits_chunk_size=8,  # several LM-head chunks per batch, recomputed in backward
    )
    data = PreferenceDataModule(
        path=spec["data"], tokenizer=spec["tokenizer"], max_length=64, max_prompt_length=32,
        batch_size=spec["batch_size"], val_fraction=0.0,
    )
    recorder = StepRecorder()
    callbacks: list[Callback] = [recorder]
    if spec.get("lora"):
        callbacks.append(SaveHFModel(dirpath=str(out / "adapter")))  # the adapter alone
    if spec.get("save_hf"):
        callbacks.append(SaveHFModel(dirpath=str(out / "hf")))
    if spec.get("tr_dpo"):
        callbacks.append(ReferenceSync(**spec["tr_dpo"]))
    if spec.get("save_every"):
        callbacks.append(ModelCheckpoint(dirpath=out / "checkpoints", filename="{step}",
                                         every_n_train_steps=spec["save_every"], save_top_k=-1))
    trainer = AlignmentTrainer(
        max_steps=spec["steps"], accelerator="cpu", devices=spec.get("devices", 1),
        num_nodes=spec.get("num_nodes", 1), strategy=strategy(spec), callbacks=callbacks, logger=False,
        enable_checkpointing=bool(spec.get("save_every")), enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=out,
    )
    trainer.fit(module, data, ckpt_path=spec.get("resume"))
    weights = full_weights(trainer)
    if trainer.is_global_zero:
        torch.save(weights, out / "policy.pt")
    facts = {
        "losses": recorder.losses,
        "keys": recorder.keys,
        "world_size": trainer.world_size,
        **(reference_facts(module, trainer, spec["model"]) if isinstance(module.reference, FrozenCopy) else {}),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(facts))
    return module


def reference_facts(module: AlignmentModule, trainer: AlignmentTrainer, path: str) -> dict[str, Any]:
    """How the frozen-copy reference is held: its share of the weights on this rank, frozen, in eval mode, out of
    the state dict and the optimizer."""
    model = module.reference.model
    if isinstance(model, FSDPModule):
        model.reshard()  # a root unit stays gathered after a forward without backward
    reference = list(model.parameters())
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in reference)
    return {
        "reference_share": local / AutoModelForCausalLM.from_pretrained(path).num_parameters(),
        "reference_wrapper": type(model).__name__,
        "reference_frozen": not any(p.requires_grad for p in reference) and not module.reference.model.training,
        "reference_in_state_dict": any("reference" in name for name in module.state_dict()),
        "optimizer_holds_reference": any(p is q for group in trainer.optimizers[0].param_groups
                                         for p in group["params"] for q in reference),
    }


def full_weights(trainer: AlignmentTrainer) -> dict[str, torch.Tensor]:
    """The policy's full (unsharded) weights on CPU, on rank 0; a collective call."""
    if isinstance(trainer.strategy, FSDPStrategy):  # FSDP1's state-dict hooks crash on CPU: gather by hand
        with FullyShardedDataParallel.summon_full_params(trainer.strategy.model, writeback=False):
            policy = trainer.lightning_module.policy
            return {name: value.detach().clone() for name, value in policy.state_dict().items()}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(trainer.strategy.model, options=options)
    return {name.removeprefix("policy."): value for name, value in state.items() if name.startswith("policy.")}


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text()))
