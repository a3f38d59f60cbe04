"""TR-DPO: a reference that learns with the policy (Gorbatovski et al. 2024, "Learn Your Reference Model for Real
Good Alignment", https://arxiv.org/abs/2404.09656).

Every ``tau`` optimizer steps the frozen copy is moved towards the policy, parameter by parameter:

    θ_ref ← α θ + (1 − α) θ_ref          soft update (the paper's Eq. 6; α = 1 is the hard update, a copy)

TRL 1.16's ``sync_ref_model`` (``SyncRefModelCallback``) does the same after each optimizer step whose number is a
multiple of ``ref_model_sync_steps``, with ``ref_model_mixup_alpha`` as α.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from lit_align.errors import ConfigError
from lit_align.reference.frozen import FrozenCopy

KEY = "trainer.callbacks.ReferenceSync"


def local(tensor: Tensor) -> Tensor:
    """The shard this process holds: a DTensor's local tensor (FSDP2), any other tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def whole(tensor: Tensor) -> Tensor:
    """The full tensor: a DTensor gathered from its shards (a collective call), any other tensor detached."""
    return tensor.full_tensor().detach() if isinstance(tensor, DTensor) else tensor.detach().clone()


def block_of(full: Tensor, param: Tensor) -> Tensor:
    """The block of ``full`` that ``param`` holds on this process: its shard for a DTensor, all of it otherwise."""
    if not isinstance(param, DTensor):
        return full
    [chunk] = param.__create_chunk_list__()  # the offset and size of this process's block (as loading.py reads)
    return full[tuple(slice(start, start + size) for start, size in zip(chunk.offsets, chunk.sizes, strict=True))]


def paired_parameters(policy: nn.Module, reference: nn.Module) -> Iterator[tuple[Tensor, Tensor]]:
    """``(policy, reference)`` parameters by name; the two models must have the same names and shapes."""
    ours, theirs = dict(policy.named_parameters()), dict(reference.named_parameters())
    if ours.keys() != theirs.keys():
        differ = sorted(ours.keys() ^ theirs.keys())[:3]
        raise ConfigError(KEY, "policy/reference", f"the two models' parameters differ by name, e.g. {differ}")
    for name, param in ours.items():
        if param.shape != theirs[name].shape:
            raise ConfigError(KEY, name, f"shape {tuple(param.shape)} in the policy, {tuple(theirs[name].shape)} "
                                         "in the reference")
        yield param, theirs[name]


def resharded(model: nn.Module) -> nn.Module:
    """``model`` with every FSDP2 unit back in its shards: a forward without backward (the reference's) leaves the
    root unit gathered, and its parameters are then whole tensors, not the shards the policy's are."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return model


@torch.no_grad()
def mix_into(reference: nn.Module, policy: nn.Module, alpha: float) -> None:
    """``θ_ref ← α θ + (1 − α) θ_ref`` for every parameter, in place, shard by shard under FSDP2 (both models are
    sharded alike, so each process mixes the shards it holds; nothing is gathered)."""
    for param, ref in paired_parameters(resharded(policy), resharded(reference)):
        target = local(ref)
        source = local(param).detach().to(device=target.device, dtype=target.dtype)
        if alpha == 1.0:
            target.copy_(source)
        else:
            target.lerp_(source, alpha)


class ReferenceSync(L.Callback):
    """TR-DPO's reference updates for a :class:`~lit_align.reference.FrozenCopy` reference (full fine-tuning).

    After every optimizer step whose number is a multiple of ``tau``, ``θ_ref ← α θ + (1 − α) θ_ref`` (TRL 1.16's
    ``sync_ref_model`` rule). The paper's soft update mixes with α every step (``tau: 1``) or every τ steps; its hard
    update copies the policy every τ steps (``mode: hard``, α = 1). The paper sweeps α in 0.5–0.8 and τ in 64–512.

    The mixed reference is saved in this callback's state, so a resumed run restores it exactly (the frozen copy is
    otherwise rebuilt from the initial weights and is not in the module's state dict). Under FSDP2 both models are
    sharded alike and each process mixes its own shards; the saved copy is gathered whole, one weight at a time, and
    each process takes back its block on resume (``tests/test_tr_dpo_sharded.py``).

    Refused, in one line, for a reference that is not a frozen copy (``DisabledAdapter`` shares the policy's weights;
    ``OfflineStore`` holds no model), for an adapted policy (LoRA, any peft method): its trained weights are
    ``W + B A``, not parameters the frozen base copy has (merge the adapter into the weights, or use
    ``DisabledAdapter`` without TR-DPO), and under FSDP1, whose flat parameters are not sharded alike.

    Args:
        mode: ``soft`` (mix with ``alpha``) or ``hard`` (copy, α = 1).
        alpha: α in (0, 1] for ``mode: soft``; unset: TRL's 0.6. ``mode: hard`` takes none.
        tau: optimizer steps between updates (TRL's ``ref_model_sync_steps``, default 512).
    """

    def __init__(self, mode: Literal["soft", "hard"] = "soft", alpha: float | None = None, tau: int = 512) -> None:
        if mode == "hard" and alpha is not None:
            raise ConfigError(f"{KEY}.alpha", alpha, "mode 'hard' copies the policy (α = 1); unset alpha")
        alpha = 1.0 if mode == "hard" else 0.6 if alpha is None else alpha
        if not 0 < alpha <= 1:
            raise ConfigError(f"{KEY}.alpha", alpha, "α must lie in (0, 1]")
        if tau < 1:
            raise ConfigError(f"{KEY}.tau", tau, "τ must be a whole number of optimizer steps ≥ 1")
        self.mode = mode
        self.alpha = alpha
        self.tau = tau
        self.last_sync = 0
        self._reference: FrozenCopy | None = None
        self._restored: dict[str, Tensor] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        reference = getattr(pl_module, "reference", None)
        if not isinstance(reference, FrozenCopy):
            raise ConfigError(KEY, type(reference).__name__, "TR-DPO updates a reference model of its own: set "
                              "model.reference to FrozenCopy (DisabledAdapter shares the policy's weights, "
                              "OfflineStore holds none)")
        if pl_module.policy_spec.adapted:
            raise ConfigError(KEY, "model.policy.lora/peft", "TR-DPO mixes full weights into the frozen copy, but "
                              "this policy trains an adapter: fine-tune fully, or drop ReferenceSync")
        if isinstance(trainer.strategy, FSDPStrategy):
            raise ConfigError(KEY, "FSDPStrategy", "DDP or FSDP2 (ModelParallelStrategy): FSDP1 flattens the policy "
                              "and the reference into flat parameters that are not sharded alike")
        self._reference = reference

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored is not None:
            self._load_reference(pl_module.reference.model, self._restored)
            self._restored = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step != self.last_sync and step % self.tau == 0:  # once per optimizer step, not per micro-batch
            mix_into(pl_module.reference.model, pl_module.policy, self.alpha)
            self.last_sync = step

    def state_dict(self) -> dict[str, Any]:
        """The sync's position and, once it has moved the reference, the reference's weights, whole (gathered,
        one weight at a time, under FSDP2: every process takes part; Lightning saves process 0's copy)."""
        state: dict[str, Any] = {"last_sync": self.last_sync, "alpha": self.alpha, "tau": self.tau}
        if self.last_sync and self._reference is not None:  # before the first update it is the initial copy
            reference = resharded(self._reference.model)
            state["reference"] = {name: whole(p).cpu() for name, p in reference.named_parameters()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_sync = state_dict["last_sync"]
        self._restored = state_dict.get("reference")

    @staticmethod
    @torch.no_grad()
    def _load_reference(reference: nn.Module, saved: dict[str, Tensor]) -> None:
        params = dict(reference.named_parameters())
        if params.keys() != saved.keys():
            raise ConfigError(KEY, "checkpoint", "the saved reference's parameters differ from this run's model")
        for name, param in params.items():
            local(param).copy_(block_of(saved[name], param).to(device=local(param).device, dtype=param.dtype))
