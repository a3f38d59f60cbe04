"""``model.compile``: ``torch.compile`` of the decoder layers of the policy and of an online reference's own model.

Regional compilation: each decoder layer's ``forward`` is compiled in place, so parameter names, state dicts,
checkpoints and adapters stay as they are, and what wraps the forward stays eager: module hooks (FSDP2's
all-gathers, the SAE capture of FPO) and transformers' gradient checkpointing, which then recomputes the compiled
forward. As every layer of a model runs the same code, the layers share one compiled graph (PyTorch inlines
built-in modules: a layer's weights are graph inputs, not constants), so compile time does not grow with depth.
The embeddings, final norm, LM head and the losses stay eager: the LM head runs chunked on response positions only
(:mod:`lit_align.models.logprobs`).

Shapes: packed rows vary in count and length from batch to batch, so the layers are compiled with
``dynamic=True``: sizes are symbolic from the first compile. PyTorch still specialises a size of 1, so a batch
of one packed row gets a graph of its own. What is compiled is then bounded, whatever the lengths: per model and
mode (the policy training with gradients, the reference or the evaluated policy without), one graph for batches of
one row and one for the others (``tests/test_compile.py`` counts them over batches of varying length).

Gradient checkpointing: transformers checkpoints inside the layer's ``forward``, where its output-capture context
(for ``output_hidden_states``, which lit-align does not read) is written; dynamo refuses to trace that write under a
checkpoint unless told not to replay it in the backward, so for checkpointed layers
``torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint`` is set (else the policy's layers would fall
back to eager).

Applied last in ``configure_model``: after the adapter is attached and after FSDP2 has sharded the layers. Not
under FSDP1, which wraps the policy after ``configure_model``, into flat parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from lit_align.sae.hooks import decoder_layers


def compile_decoder_layers(*models: nn.Module | None) -> int:
    """Compile the ``forward`` of every decoder layer of each model given (``None`` skipped) in place,
    ``dynamic=True``; models that share layers (a LoRA policy and its adapter-disabled base) compile them once.
    Returns the layers compiled."""
    compiled = 0
    for model in models:
        if model is None:
            continue
        for layer in decoder_layers(model):
            if getattr(layer, "gradient_checkpointing", False):  # transformers checkpoints inside the forward
                torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
            if not is_compiled(layer):
                layer.forward = torch.compile(layer.forward, dynamic=True)
                compiled += 1
    return compiled


def is_compiled(layer: nn.Module) -> bool:
    """Whether :func:`compile_decoder_layers` compiled ``layer`` (its ``forward`` is then its own attribute)."""
    return "forward" in vars(layer)
