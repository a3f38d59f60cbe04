"""Read and write :class:`SparseAutoencoder` weights in the two common on-disk layouts.

**Gemma Scope** (https://huggingface.co/google/gemma-scope): one ``params.npz`` with ``W_enc (d_model, d_sae)``,
``W_dec (d_sae, d_model)``, ``b_enc (d_sae,)``, ``b_dec (d_model,)``, ``threshold (d_sae,)``; always JumpReLU,
no ``b_dec`` subtraction at the input. The residual SAEs live in ``layer_{L}/width_.../average_l0_...``
folders and read the output of block ``L``: the layer is parsed from that path.

**SAELens** (https://github.com/jbloomAus/SAELens): ``cfg.json`` + ``sae_weights.safetensors`` with the same
tensor names. Read: ``architecture`` ``"standard"`` (ReLU, or TopK when the pre-6 ``activation_fn[_str]`` is
``"topk"`` with ``activation_fn_kwargs.k``), ``"jumprelu"`` or ``"topk"`` (``k``); ``d_in``, ``d_sae``,
``apply_b_dec_to_input`` (default true), and the layer from ``hook_name`` ``blocks.{L}.hook_resid_post``
(``blocks.{L}.hook_resid_pre`` is block ``L-1``'s output), top level or under ``metadata``. Written: the
SAELens 6 layout, with the hook fields also at the top level so pre-6 readers find them. Activation
normalisation, fine-tuning scaling factors and ``hook_z`` reshaping are refused, not silently ignored.

Loaded SAEs have float32 parameters on the CPU; move them with ``.to(device, dtype)``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from lit_align.files import save_safetensors
from lit_align.sae.autoencoder import SparseAutoencoder

GEMMA_SCOPE_FILE = "params.npz"
SAELENS_CONFIG_FILE = "cfg.json"
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"


def load_sae(path: str | Path) -> SparseAutoencoder:
    """Load an SAE from a Gemma Scope ``params.npz`` (or its folder) or a SAELens folder, found by its files."""
    path = Path(path)
    if path.name == GEMMA_SCOPE_FILE or (path / GEMMA_SCOPE_FILE).is_file():
        return load_gemma_scope(path)
    if (path / SAELENS_CONFIG_FILE).is_file():
        return load_saelens(path)
    raise FileNotFoundError(
        f"no SAE at {path}: expected {GEMMA_SCOPE_FILE} (Gemma Scope) or {SAELENS_CONFIG_FILE} + "
        f"{SAELENS_WEIGHTS_FILE} (SAELens)"
    )


def load_gemma_scope(path: str | Path, layer: int | None = None) -> SparseAutoencoder:
    """Load a Gemma Scope JumpReLU SAE from ``params.npz`` or the folder holding it.

    Args:
        path: the file or its folder.
        layer: the decoder layer it reads; by default parsed from a ``layer_{L}`` component of the path.
    """
    path = Path(path)
    file = path if path.name == GEMMA_SCOPE_FILE else path / GEMMA_SCOPE_FILE
    with np.load(file) as data:
        tensors = {name: torch.from_numpy(np.asarray(data[name], dtype=np.float32)) for name in data.files}
    if layer is None:
        layer = _layer_from_path(file)
    d_model, d_sae = tensors["W_enc"].shape
    sae = SparseAutoencoder(d_model, d_sae, activation="jumprelu", apply_b_dec_to_input=False, layer=layer)
    sae.load_state_dict(tensors)
    return sae


def save_gemma_scope(sae: SparseAutoencoder, path: str | Path) -> Path:
    """Write ``path/params.npz`` (float32). ReLU is saved as JumpReLU with zero thresholds (the same function);
    ``b_dec`` subtraction is folded into ``b_enc``; TopK has no Gemma Scope form and is refused."""
    if sae.activation == "topk":
        raise ValueError("a topk SAE cannot be saved in Gemma Scope's layout (JumpReLU only); use save_saelens")
    with torch.no_grad():
        b_enc = sae.b_enc - sae.b_dec @ sae.W_enc if sae.apply_b_dec_to_input else sae.b_enc
        threshold = sae.threshold if sae.activation == "jumprelu" else torch.zeros_like(sae.b_enc)
        tensors = {"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_enc": b_enc, "b_dec": sae.b_dec, "threshold": threshold}
        arrays = {name: tensor.detach().float().cpu().numpy() for name, tensor in tensors.items()}
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / GEMMA_SCOPE_FILE, **arrays)
    return path / GEMMA_SCOPE_FILE


def load_saelens(path: str | Path) -> SparseAutoencoder:
    """Load an SAE from a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``)."""
    path = Path(path)
    cfg = json.loads((path / SAELENS_CONFIG_FILE).read_text())
    _refuse_unsupported(cfg, path)
    activation, k = _saelens_activation(cfg, path)
    tensors = load_file(path / SAELENS_WEIGHTS_FILE)
    if "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    sae = SparseAutoencoder(
        cfg["d_in"],
        cfg["d_sae"],
        activation=activation,
        k=k,
        apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", True),
        layer=_saelens_layer(cfg),
    )
    sae.load_state_dict({name: tensor.float() for name, tensor in tensors.items()})
    return sae


def save_saelens(sae: SparseAutoencoder, path: str | Path, model_name: str | None = None) -> Path:
    """Write ``path/cfg.json`` and ``path/sae_weights.safetensors`` in SAELens' layout; returns ``path``."""
    architecture = {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk"}[sae.activation]
    hook = {
        "model_name": model_name,
        "hook_name": None if sae.layer is None else f"blocks.{sae.layer}.hook_resid_post",
        "hook_layer": sae.layer,
    }
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "d_in": sae.d_model,
        "d_sae": sae.d_sae,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **({"k": sae.k} if sae.activation == "topk" else {}),
        "metadata": hook,
        **hook,
    }
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in sae.state_dict().items()}
    save_safetensors(tensors, path / SAELENS_WEIGHTS_FILE)
    (path / SAELENS_CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    return path


def _refuse_unsupported(cfg: dict[str, Any], path: Path) -> None:
    if cfg.get("normalize_activations") not in (None, "none", False):
        raise ValueError(
            f"{path}: normalize_activations={cfg['normalize_activations']!r} is not supported; fold the "
            "normalisation into the weights first (SAELens: fold_activation_norm_scaling_factor)"
        )
    if cfg.get("finetuning_scaling_factor"):
        raise ValueError(f"{path}: finetuning_scaling_factor is not supported")
    if cfg.get("reshape_activations", "none") != "none":
        raise ValueError(f"{path}: reshape_activations={cfg['reshape_activations']!r} is not a residual SAE")


def _saelens_activation(cfg: dict[str, Any], path: Path) -> tuple[str, int | None]:
    architecture = cfg.get("architecture", "standard")
    if architecture == "jumprelu":
        return "jumprelu", None
    if architecture == "topk":
        return "topk", int(cfg["k"] if "k" in cfg else cfg["activation_fn_kwargs"]["k"])
    if architecture == "standard":
        function = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
        if function == "relu":
            return "relu", None
        if function == "topk":
            return "topk", int(cfg["activation_fn_kwargs"]["k"])
        raise ValueError(f"{path}: activation function {function!r} is not supported (relu, topk)")
    raise ValueError(f"{path}: architecture {architecture!r} is not supported (standard, jumprelu, topk)")


def _saelens_layer(cfg: dict[str, Any]) -> int | None:
    hook_name = (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(post|pre)", hook_name or "")
    if match is None:
        return None
    block = int(match.group(1))
    layer = block if match.group(2) == "post" else block - 1
    return layer if layer >= 0 else None


def _layer_from_path(file: Path) -> int | None:
    layers = [int(m.group(1)) for part in file.parts if (m := re.fullmatch(r"layer_(\d+)", part))]
    return layers[-1] if layers else None
