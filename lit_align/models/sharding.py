"""FSDP2 (``fully_shard``) for a causal LM, on the data-parallel mesh Lightning's ``ModelParallelStrategy`` hands
to ``configure_model``.

Each decoder layer is one FSDP unit and the model itself the root unit, which holds the rest: the embedding,
the final norm and the LM head (tied embeddings stay one parameter). The root unit is gathered by the model's
own forward and, as FSDP2 does for a root, kept gathered until backward; so :func:`lit_align.models.policy.final_hidden`
runs a sharded model through its forward, and the LM head's chunked calls afterwards gather nothing. (A unit of
its own for the head would gather, and reduce its gradients, once per chunk, and processes with different
numbers of response tokens would then wait on each other for ever.)

Mixed precision as FSDP intends it (:class:`FSDPMixedPrecision`): fp32 master weights and optimizer states in the
shards, each unit all-gathered and computed in bf16, gradients reduce-scattered in fp32.

Under Lightning's ``FSDPStrategy`` (FSDP1) the strategy wraps the policy itself; the frozen reference, which is
no submodule, is wrapped here (:func:`wrap_frozen_fsdp1`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from peft import PeftModel
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.fsdp.wrap import wrap

from lit_align.models.loading import UnitLoader, load_shards
from lit_align.models.policy import DType


@dataclass
class FSDPMixedPrecision:
    """FSDP2's ``MixedPrecisionPolicy`` (``model.mixed_precision`` in ``configs/fsdp2.yaml``): the sharded
    parameters (master weights, and so the optimizer states) stay in the policy's dtype (fp32); each unit is
    all-gathered and computed in ``param_dtype`` and its gradients reduce-scattered in ``reduce_dtype``."""

    param_dtype: DType = "bfloat16"
    """All-gather and compute dtype."""
    reduce_dtype: DType = "float32"
    """Gradient reduce-scatter dtype (fp32: no rounding in the sum over processes)."""

    def policy(self) -> MixedPrecisionPolicy:
        return MixedPrecisionPolicy(param_dtype=getattr(torch, self.param_dtype),
                                    reduce_dtype=getattr(torch, self.reduce_dtype))


def decoder_layer_classes(model: nn.Module) -> set[str]:
    """Names of the decoder-layer classes of a transformers model (its ``_no_split_modules``): the FSDP unit, as
    in the auto-wrap policy of ``configs/fsdp.yaml``."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    if not names:
        raise ValueError(f"{type(base).__name__} names no decoder-layer class (_no_split_modules); cannot shard it")
    return names


def shard_causal_lm(model: nn.Module, mesh: DeviceMesh, mixed_precision: FSDPMixedPrecision | None = None
                    ) -> nn.Module:
    """Shard ``model`` (a transformers causal LM, or a peft model around one) in place over ``mesh``: each decoder
    layer a unit, ``model`` itself the root unit; in ``mixed_precision`` if given (else all in the model's dtype)."""
    layer_classes = decoder_layer_classes(model)
    policy = mixed_precision.policy() if mixed_precision is not None else MixedPrecisionPolicy()
    for layer in model.modules():
        if type(layer).__name__ in layer_classes:
            fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def shard_and_load(model: nn.Module, mesh: DeviceMesh, mixed_precision: FSDPMixedPrecision | None,
                   device: torch.device) -> nn.Module:
    """FSDP2-shard ``model``; an empty one (built on the meta device) then reads its shards
    (:func:`lit_align.models.loading.load_shards`)."""
    return load_shards(shard_causal_lm(model, mesh, mixed_precision), device)


def wrap_frozen_fsdp1(model: nn.Module) -> nn.Module:
    """FSDP1 for a frozen reference under Lightning's ``FSDPStrategy``, called inside the strategy's
    ``model_sharded_context`` so the wrapper takes the strategy's own settings (auto-wrap policy, mixed precision,
    sharding strategy, device). FSDP1 hands a root's parameters back sharded after each forward, so the LM head,
    called chunk by chunk after the forward, stays out of the wrapper (``ignored_modules``, replicated). An empty
    model reads its weights unit by unit as it is wrapped (:class:`lit_align.models.loading.UnitLoader`)."""
    head = model.get_output_embeddings()
    load = UnitLoader(model)
    load(head)  # FSDP materialises no ignored module
    return wrap(model, ignored_modules=[head], param_init_fn=load)
