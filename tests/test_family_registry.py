"""The family registry (``lit_align/models/families.py``) against the installed transformers: every causal LM whose
``forward`` changes the logits around the LM head has an entry (supported or refused by name), and each entry's
declared data (transform attribute, tied embeddings, attention kinds) matches its family's default config."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest
from transformers import AutoConfig
from transformers.models.auto.configuration_auto import model_type_to_module_name
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from lit_align.models.families import FAMILIES, VERIFIED_MODEL_TYPES

AROUND_HEAD = re.compile(r"logit_scale|logits_scaling|soft_?cap|lm_head_multiplier|logit_softcap|unpadded_vocab|"
                         r"lm_head\([^)]*\)\s*[*/]|predict_logits|self\.decoder\(self\.lm_head|post_projection")
"""What a forward does to the logits (or the hidden states) around the head, in transformers 5.25's families."""
KINDS = {"full_attention": "full", "sliding_attention": "sliding", "chunked_attention": "chunked",
         "linear_attention": "recurrent", "mamba": "recurrent", "hybrid": "full"}


def forward_source(model_type: str) -> str | None:
    """The source of ``model_type``'s causal-LM ``forward``, or ``None`` where transformers ships no module."""
    module_name = model_type_to_module_name(model_type)
    try:
        module = importlib.import_module(f"transformers.models.{module_name}.modeling_{module_name}")
    except ImportError:
        return None
    model_class = getattr(module, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type], None)
    return None if model_class is None else inspect.getsource(model_class.forward)


def transforms_around_head(model_type: str) -> bool:
    source = forward_source(model_type)
    return source is not None and AROUND_HEAD.search(source) is not None


def test_every_family_with_a_transform_around_the_head_has_an_entry():
    found = {model_type for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if transforms_around_head(model_type)}
    assert {"cohere2", "granitemoehybrid", "falcon_h1", "minicpm3", "vaultgemma", "recurrent_gemma"} <= found
    assert found - set(FAMILIES) == set()


@pytest.mark.parametrize("family", sorted(VERIFIED_MODEL_TYPES))
def test_an_entry_says_what_its_default_config_says(family):
    entry, config = FAMILIES[family], AutoConfig.for_model(family)
    assert getattr(config, "tie_word_embeddings", False) == entry.tied
    if entry.post_head is not None:
        assert hasattr(config, entry.post_head.attribute)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    assert {KINDS[kind] for kind in layer_types if kind in KINDS} <= set(entry.attention)
