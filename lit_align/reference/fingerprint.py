"""Fingerprints: the one home of what identifies an offline store's reference, tokenizer, lengths, data and SAE.

``lit-align precompute`` writes :func:`run_fingerprint` (plus :func:`data_fingerprint` of the pairs it covers) into
the store and into each journal shard; training recomputes it and refuses a store that differs, naming what.
The ``reference`` part is the weights of the model that actually computed the log-probs: the initial policy for
the default source, or the separate model of ``FrozenCopy(path=...)`` (:func:`source_fingerprint`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import TYPE_CHECKING, Any

from peft import PeftModel
from torch import Tensor, nn

if TYPE_CHECKING:
    from lit_align.reference.base import ReferenceProvider
    from lit_align.sae.features import SAEFeatures


def weights_fingerprint(model: nn.Module, sample: int = 4096) -> str:
    """A cheap fingerprint of a model's base weights: names, shapes, dtypes, sums and a strided sample.

    LoRA parameters are skipped and peft's ``base_layer`` renaming undone, so a LoRA policy's base and a
    plain copy of it agree.
    """
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(base.state_dict().items()):
        if "lora_" in name:
            continue
        flat = tensor.detach().reshape(-1).float().cpu()
        stride = max(1, flat.numel() // sample)
        digest.update(f"{name.replace('base_layer.', '')}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(f"{flat.double().sum().item():.6e}".encode())
        digest.update(flat[::stride].numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A fingerprint of a tokenizer's vocabulary, special tokens and chat template."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(json.dumps([tokenizer.all_special_tokens, getattr(tokenizer, "chat_template", None)]).encode())
    return digest.hexdigest()


def data_fingerprint(keys: Tensor) -> str:
    """A fingerprint of the set of example keys a store covers."""
    return hashlib.blake2b(keys.sort().values.numpy().tobytes(), digest_size=16).hexdigest()


def sae_fingerprint(features: SAEFeatures) -> dict[str, Any]:
    """A fingerprint of an objective's SAE features: the SAE's weights, its layer and its width, and where the
    features are read and how pooled when not the defaults (so a store of the defaults still matches them)."""
    fingerprint = {"weights": weights_fingerprint(features.sae), "layer": features.feature_layer,
                   "d_sae": features.d_sae}
    for part, default in (("site", "residual"), ("pooling", "response")):
        if getattr(features, part) != default:
            fingerprint[part] = getattr(features, part)
    return fingerprint


def run_fingerprint(reference: nn.Module | str, datamodule, features: SAEFeatures | None = None) -> dict[str, Any]:
    """The fingerprint a store must carry to serve this run: the ``reference`` model's weights (or their
    fingerprint), the tokenizer and length settings, and the SAE when the objective reads ``features``. Data is
    left out: coverage is checked key by key."""
    weights = reference if isinstance(reference, str) else weights_fingerprint(reference)
    fingerprint: dict[str, Any] = {"reference": weights}
    if datamodule is not None:
        fingerprint["tokenizer"] = tokenizer_fingerprint(datamodule.tokenizer)
        lengths = datamodule.lengths
        fingerprint["lengths"] = [lengths.max_length, lengths.max_prompt_length, lengths.truncation_mode]
    if features is not None:
        fingerprint["sae"] = sae_fingerprint(features)
    return fingerprint


def reference_fingerprint(reference: ReferenceProvider) -> str:
    """The weights fingerprint of the model an attached online ``reference`` runs (LoRA adapters excluded)."""
    with reference.generation_model() as model:
        return weights_fingerprint(model)


def source_fingerprint(source: ReferenceProvider | None, policy: nn.Module) -> str:
    """The ``reference`` fingerprint a store built from ``source`` carries, without running ``source``: the
    policy's own weights, unless ``source`` loads a separate model (``FrozenCopy(path=...)``), which is then
    loaded once to be fingerprinted and freed."""
    if getattr(source, "path", None) is None:
        return weights_fingerprint(policy)
    probe = copy.copy(source)
    probe.attach(policy)
    return reference_fingerprint(probe)
