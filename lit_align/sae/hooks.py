"""Capture the residual stream at the output of one decoder layer with a forward hook.

The captured tensor is the block's output, before any later block and before the final norm: for Llama-style
``transformers`` models ``model.get_decoder().layers[layer]``'s output, which is TransformerLens'
``blocks.{layer}.hook_resid_post`` and what Gemma Scope / SAELens residual SAEs read. It is not
``hidden_states[-1]`` (that one is after the final norm). Decoder layers return a tensor (``transformers`` 5)
or a tuple whose first element is the hidden states (older versions); both are handled.

The hook sits on the layer module, so under ``transformers``' gradient checkpointing (which checkpoints the
layer's ``forward``, not ``__call__``) it sees the checkpoint's output and the capture stays differentiable.

With ``stop=True`` the hook raises a private exception right after the capture, which the context manager
swallows: the layers after ``layer``, the final norm and the LM head never run. That is for the reference
side when only its features are needed, under ``torch.no_grad()``; the policy side, which needs its full
forward anyway, uses ``stop=False``. Interrupting a forward mid-way is not meant for FSDP-sharded modules.
"""

from __future__ import annotations

from types import TracebackType

from torch import Tensor, nn

from lit_align.models.head import packed_arguments
from lit_align.models.pair_attention import Spans


class _StopForward(Exception):
    """Raised by a stopping capture hook once it holds the activations; swallowed by its own context."""

    def __init__(self, capture: ResidualCapture) -> None:
        super().__init__("forward stopped after the captured layer")
        self.capture = capture


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a causal LM, its base model, or a PEFT wrapper of either: ``get_decoder().layers``
    (``get_decoder().h`` in GPT-2-style models)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for name in ("layers", "h"):
        layers = getattr(decoder, name, None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ValueError(f"{type(model).__name__} has no decoder layers at model.get_decoder().layers (or .h)")


class ResidualCapture:
    """Context manager holding a forward hook on decoder layer ``layer``; ``activations`` is the last capture.

    Args:
        model: a ``transformers`` causal LM, its base model, or a PEFT wrapper.
        layer: index of the decoder layer whose output is captured, ``0 ≤ layer < num_layers``.
        stop: stop the forward right after the capture (see the module docstring).

    Example::

        with ResidualCapture(policy, layer=12) as capture:
            hidden = policy.get_decoder()(input_ids, attention_mask=attention_mask).last_hidden_state
        residual = capture.activations            # (batch, time, hidden), with gradient

        with torch.no_grad(), ResidualCapture(reference, layer=12, stop=True) as capture:
            reference.get_decoder()(input_ids, attention_mask=attention_mask)   # returns after layer 12
        residual = capture.activations

    With ``stop=True``, put only the forward call inside the ``with`` block: the statements after it in the
    block are skipped when the forward stops.
    """

    def __init__(self, model: nn.Module, layer: int, stop: bool = False) -> None:
        layers = decoder_layers(model)
        if not 0 <= layer < len(layers):
            raise ValueError(f"layer must be in [0, {len(layers)}) for this model, got layer={layer}")
        self.module = layers[layer]
        self.layer = layer
        self.stop = stop
        self._activations: Tensor | None = None
        self._handle = None

    def __enter__(self) -> ResidualCapture:
        self._activations = None
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        self._handle.remove()
        self._handle = None
        return isinstance(exc, _StopForward) and exc.capture is self

    @property
    def activations(self) -> Tensor:
        """Output of the hooked layer in the last forward, ``(batch, time, hidden)``."""
        if self._activations is None:
            raise RuntimeError(f"no forward has reached decoder layer {self.layer} inside this capture")
        return self._activations

    def _hook(self, module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
        self._activations = output[0] if isinstance(output, tuple) else output
        if self.stop:
            raise _StopForward(self)


def residual_stream(
    model: nn.Module,
    layer: int,
    input_ids: Tensor,
    attention_mask: Tensor | dict[str, Tensor] | None = None,
    position_ids: Tensor | None = None,
    pair_spans: Spans | None = None,
) -> Tensor:
    """Output of decoder layer ``layer`` for a batch, running only the layers up to it (the packed layout's
    ``position_ids`` and ``pair_spans`` as :func:`lit_align.models.head.final_hidden` takes them).

    Gradients flow if they are enabled; wrap in ``torch.no_grad()`` for a frozen reference.

    Returns:
        ``(batch, time, hidden)`` residual activations in the model's dtype.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    with ResidualCapture(model, layer, stop=True) as capture:
        decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                **packed_arguments(position_ids, pair_spans))
    return capture.activations
