"""The layout a batch's pairs run in — padded, or prompt-shared and padding-free — and what each gives a model.

A collated batch (:class:`~lit_align.data.PairCollator`) carries both layouts; the module picks one per run
(:func:`packing_obstacle`) and hands the chosen *view* to the policy and the reference alike:

- :func:`padded_view`: today's ``(2B, T)`` rows, chosen then rejected, each with its prompt.
- :func:`packed_view`: each pair once as ``[prompt | chosen | rejected]``, the pairs concatenated into a few
  rows (:mod:`lit_align.data.packing`), or into one where the model attends by pair
  (:mod:`lit_align.models.pair_attention`, SDPA's default here); its ``input_ids`` and ``response_mask`` are those
  of the response grid, so code that reads response positions from ``(input_ids, response_mask)`` works unchanged
  on :func:`response_states`.

The packed attention mask (``1`` = may attend), for one pair with prompt ``p``, chosen ``c``, rejected ``r``::

           p0 p1 c0 c1 r0 r1
      p0 [ 1  .  .  .  .  . ]
      p1 [ 1  1  .  .  .  . ]
      c0 [ 1  1  1  .  .  . ]
      c1 [ 1  1  1  1  .  . ]
      r0 [ 1  1  .  .  1  . ]     rejected tokens see the prompt and themselves, never the chosen
      r1 [ 1  1  .  .  1  1 ]

and zero between pairs (and between padding and the rest; padding sees only earlier padding of its row, so no
softmax row is empty). A sliding window (Mistral's, the sliding layers of Qwen2 or Gemma-3) is applied to position ids,
``pos_q - pos_k < window``, as the padded layout applies it to indices; the model cannot do that itself, because
in the packed row a rejected token's index distance to the prompt exceeds its position distance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from peft import PeftModel
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask
from transformers import PretrainedConfig

from lit_align.data.packing import CHOSEN, REJECTED, one_row
from lit_align.models.compiling import is_compiled
from lit_align.models.families import FAMILIES, packed_families
from lit_align.models.pair_attention import BY_PAIR, pair_rows, pair_spans
from lit_align.sae.hooks import decoder_layers

PACKED = "packed_layout"
"""The key of a packed view's rows (its presence marks the view as packed)."""
MASK_BACKENDS = ("sdpa", "eager", "flex_attention", BY_PAIR)
"""Attention backends that take a custom mask: SDPA a boolean 4D mask, eager an additive one, FlexAttention a
``BlockMask`` (which skips the blocks that are masked out entirely: other pairs, the rejected-on-chosen block),
SDPA by pair (:mod:`lit_align.models.pair_attention`) each pair's own boolean mask."""
MASK_BY_LAYER_TYPE = packed_families("mask_per_layer_type")
"""Families whose decoder takes one mask per layer type (``{"full_attention": …, "sliding_attention": …}``); from
the registry's ``packed`` field (:mod:`lit_align.models.families`)."""
ONE_MASK = packed_families("one_mask")
"""Families whose decoder uses one mask for every layer (Mistral's sliding window applied to it here)."""


def attention_backend(config: PretrainedConfig) -> str | None:
    """The attention implementation a model built from ``config`` runs (``"sdpa"``, ``"eager"``,
    ``"flex_attention"``, ...): what ``attn_implementation`` asked for, or what ``from_pretrained`` chose.

    transformers has no public reader for it (``set_attn_implementation`` writes it, nothing reads it back), so
    this is the one place that reads the private ``config._attn_implementation``; ``tests/test_packing.py``
    checks it against the backend a model was loaded with.
    """
    return config._attn_implementation


def packing_obstacle(model: nn.Module) -> str | None:
    """Why ``model`` cannot run the packed layout exactly, or ``None`` when it can."""
    config = model.config
    family = config.model_type
    entry = FAMILIES.get(family)
    if entry is not None and entry.unpackable is not None:
        return f"{family!r} cannot run packed: {entry.unpackable}"
    if family not in MASK_BY_LAYER_TYPE | ONE_MASK:
        return f"the packed layout is verified for {sorted(MASK_BY_LAYER_TYPE | ONE_MASK)}, not {family!r}"
    backend = attention_backend(config)
    if backend not in MASK_BACKENDS:
        return f"attention backend {backend!r} takes no custom 4D mask (packing runs on {list(MASK_BACKENDS)})"
    return None


def takes_packing(*models: nn.Module | None) -> bool:
    """Whether every model given takes the packed layout; when one cannot, say why (once per call). When they all
    do, those on SDPA switch to attention by pair (:func:`attend_by_pair`)."""
    given = [model for model in models if model is not None]
    obstacle = next((reason for reason in map(packing_obstacle, given) if reason is not None), None)
    if obstacle is not None:
        rank_zero_warn(f"pairs run in the padded layout: {obstacle}")
        return False
    for model in given:
        attend_by_pair(model)
    return True


def attend_by_pair(model: nn.Module) -> bool:
    """Switch ``model`` (a causal LM or a PEFT wrapper) from SDPA to :data:`BY_PAIR`; whether it now runs it."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    backend = attention_backend(base.config)
    if backend == BY_PAIR:
        return True
    if backend != "sdpa" or any(is_compiled(layer) for layer in decoder_layers(base)):
        return False
    base.set_attn_implementation(BY_PAIR)
    return True


def padded_view(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch in the padded layout."""
    return {name: value for name, value in batch.items() if name != "packed"}


def packed_view(batch: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """The batch in the packed layout: ``input_ids`` and ``response_mask`` of the response grid, the rows apart
    (joined into one row, :func:`~lit_align.data.packing.one_row`, when ``model`` attends by pair)."""
    packed = batch["packed"]
    if attention_backend(model.config) == BY_PAIR:
        packed = one_row(packed)
    return {"example_key": batch["example_key"], "input_ids": packed["response_ids"],
            "response_mask": packed["response_mask"], PACKED: packed}


def decoder_inputs(batch: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Keyword arguments for ``model``'s decoder on ``batch``'s view: ids, attention mask(s), position ids, and the
    pairs' spans for attention by pair."""
    packed = batch.get(PACKED)
    if packed is None:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    inputs = {"input_ids": packed["input_ids"], "attention_mask": attention_masks(packed, model),
              "position_ids": packed["position_ids"]}
    if attention_backend(model.config) == BY_PAIR:
        inputs["pair_spans"] = pair_spans(packed)
    return inputs


def response_states(batch: dict[str, Any], states: Tensor) -> Tensor:
    """Per-token states (hidden, residual) of the model inputs, arranged as ``batch["input_ids"]``: as they are
    for a padded view, gathered at the response grid, ``(2B, W, H)``, for a packed one."""
    packed = batch.get(PACKED)
    return states if packed is None else states.flatten(0, 1)[packed["grid"]]


def attention_masks(packed: dict[str, Tensor], model: nn.Module) -> Tensor | BlockMask | dict[str, Any]:
    """The packed rows' 4D mask for ``model``: one per layer type for the families that take that (the window on
    the ``sliding_attention`` one), else one (windowed where the family's layers may slide: Mistral, Mixtral, Phi-3
    with ``sliding_window`` set; a ``sliding_window`` the family's attention ignores is not applied)."""
    config = model.config
    window = getattr(config, "sliding_window", None)
    if config.model_type in MASK_BY_LAYER_TYPE:
        return {kind: _backend_mask(packed, window if kind == "sliding_attention" else None, model)
                for kind in set(config.layer_types)}
    slides = "sliding" in FAMILIES[config.model_type].attention
    return _backend_mask(packed, window if slides else None, model)


def pair_rule(packed: dict[str, Tensor], window: int | None = None) -> Callable[..., Tensor]:
    """The packed rows' mask as a FlexAttention ``mask_mod``: query token ``q`` may attend to key ``k`` when they
    belong to the same pair, ``k`` is not after ``q``, ``q`` is not rejected while ``k`` is chosen, and (with a
    ``window``) ``k`` lies less than ``window`` positions before ``q``."""
    pair, part, position = packed["pair_index"], packed["part"], packed["position_ids"]

    def visible(row: Tensor, head: Tensor, query: Tensor, key: Tensor) -> Tensor:
        allowed = (pair[row, query] == pair[row, key]) & (key <= query)
        allowed = allowed & ~((part[row, query] == REJECTED) & (part[row, key] == CHOSEN))
        return allowed if window is None else allowed & (position[row, key] > position[row, query] - window)

    return visible


def pair_mask(packed: dict[str, Tensor], window: int | None = None) -> Tensor:
    """``(R, 1, L, L)`` boolean mask of the packed rows (:func:`pair_rule` on every query-key pair)."""
    rows, length = packed["pair_index"].shape
    device = packed["pair_index"].device
    index = torch.arange(length, device=device)
    row = torch.arange(rows, device=device)[:, None, None]
    return pair_rule(packed, window)(row, 0, index[None, :, None], index[None, None, :])[:, None]


def _backend_mask(packed: dict[str, Tensor], window: int | None, model: nn.Module) -> Tensor | BlockMask:
    """SDPA takes the boolean mask, eager attention adds it to the scores (0 or the dtype's minimum),
    FlexAttention takes it as a ``BlockMask``, SDPA by pair each pair's own boolean mask."""
    backend = attention_backend(model.config)
    if backend == BY_PAIR:
        return pair_mask(pair_rows(packed), window)
    if backend == "flex_attention":
        rows, length = packed["pair_index"].shape
        return create_block_mask(pair_rule(packed, window), rows, None, length, length,
                                 device=packed["pair_index"].device)
    allowed = pair_mask(packed, window)
    if backend == "sdpa":
        return allowed
    dtype = model.dtype
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed,
                                                                                        torch.finfo(dtype).min)
