"""SparseAutoencoder math against float64 loop oracles, the Gemma Scope / SAELens layouts, the width check and
response pooling."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lit_align.sae import (
    SparseAutoencoder,
    check_sae_width,
    load_gemma_scope,
    load_sae,
    load_saelens,
    pooled_features,
    save_gemma_scope,
    save_saelens,
)


def random_sae(activation: str, d_model: int = 6, d_sae: int = 10, k: int | None = None, **kwargs):
    torch.manual_seed(0)
    sae = SparseAutoencoder(d_model, d_sae, activation, k=k, **kwargs)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_()
        if activation == "jumprelu":
            sae.threshold.uniform_(0.0, 1.5)
    return sae


def naive_encode(sae: SparseAutoencoder, x: list[float]) -> list[float]:
    """f(x) from the equations, one feature at a time, in float64."""
    w_enc, b_enc, b_dec = sae.W_enc.double().tolist(), sae.b_enc.double().tolist(), sae.b_dec.double().tolist()
    shift = b_dec if sae.apply_b_dec_to_input else [0.0] * len(x)
    pre = [
        sum((x[j] - shift[j]) * w_enc[j][i] for j in range(len(x))) + b_enc[i] for i in range(len(b_enc))
    ]
    if sae.activation == "relu":
        return [max(p, 0.0) for p in pre]
    if sae.activation == "jumprelu":
        theta = sae.threshold.double().tolist()
        return [p if p > theta[i] else 0.0 for i, p in enumerate(pre)]
    kth = sorted(pre, reverse=True)[sae.k - 1]
    return [max(p, 0.0) if p >= kth else 0.0 for p in pre]


def naive_decode(sae: SparseAutoencoder, f: list[float]) -> list[float]:
    w_dec, b_dec = sae.W_dec.double().tolist(), sae.b_dec.double().tolist()
    return [sum(f[i] * w_dec[i][j] for i in range(len(f))) + b_dec[j] for j in range(len(b_dec))]


CASES = [("relu", None, False), ("jumprelu", None, False), ("topk", 3, True), ("topk", 1, False), ("relu", None, True)]


@pytest.mark.parametrize(("activation", "k", "apply_b_dec"), CASES)
def test_encode_decode_match_float64_oracle(activation, k, apply_b_dec):
    sae = random_sae(activation, k=k, apply_b_dec_to_input=apply_b_dec)
    x = torch.randn(2, 4, sae.d_model)
    features, reconstruction = sae.encode(x), sae(x)
    assert features.shape == (2, 4, sae.d_sae) and reconstruction.shape == x.shape
    for row in range(2):
        for t in range(4):
            f = naive_encode(sae, x[row, t].double().tolist())
            torch.testing.assert_close(features[row, t].double(), torch.tensor(f, dtype=torch.float64),
                                       rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(reconstruction[row, t].double(),
                                       torch.tensor(naive_decode(sae, f), dtype=torch.float64), rtol=1e-5, atol=1e-4)
    if activation == "topk":
        assert ((features > 0).sum(-1) <= k).all() and ((features != 0).sum(-1) <= k).all()
    assert (features >= 0).all()


def test_hand_worked_case():
    """d_model 2, d_sae 3: pre = x W_enc + b_enc = [1.5, -0.5, 0.7] for x = [1, 2]."""
    sae = SparseAutoencoder(2, 3, "jumprelu")
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.5, -0.3], [0.5, -0.5, 0.5]]))
        sae.b_enc.copy_(torch.tensor([-0.5, 0.0, 0.0]))
        sae.threshold.copy_(torch.tensor([1.0, 0.0, 0.8]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]))
        sae.b_dec.copy_(torch.tensor([0.1, -0.1]))
    x = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(sae.pre_activations(x), torch.tensor([1.5, -0.5, 0.7]))
    torch.testing.assert_close(sae.encode(x), torch.tensor([1.5, 0.0, 0.0]))  # 0.7 is under its threshold 0.8
    torch.testing.assert_close(sae(x), torch.tensor([1.6, -0.1]))
    relu = SparseAutoencoder(2, 3, "relu")
    topk = SparseAutoencoder(2, 3, "topk", k=2)
    for other in (relu, topk):
        other.load_state_dict({n: t for n, t in sae.state_dict().items() if n != "threshold"})
    torch.testing.assert_close(relu.encode(x), torch.tensor([1.5, 0.0, 0.7]))
    torch.testing.assert_close(topk.encode(x), torch.tensor([1.5, 0.0, 0.7]))
    topk.k = 1
    torch.testing.assert_close(topk.encode(x), torch.tensor([1.5, 0.0, 0.0]))
    topk.k = 2
    with torch.no_grad():
        topk.b_enc.sub_(3.0)  # pre = [-1.5, -3.5, -2.3]: the two largest are negative, and ReLU zeroes them
    torch.testing.assert_close(topk.encode(x), torch.zeros(3))


def test_encode_casts_input_and_keeps_gradient():
    sae = random_sae("topk", k=3)
    x = torch.randn(5, sae.d_model, dtype=torch.bfloat16, requires_grad=True)
    features = sae.encode(x)
    assert features.dtype == torch.float32
    features.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "topk"}, "k="),
        ({"activation": "topk", "k": 11}, "k="),
        ({"activation": "relu", "k": 3}, "k applies"),
        ({"activation": "gelu"}, "activation"),
        ({"activation": "relu", "layer": -1}, "layer"),
    ],
)
def test_invalid_configuration_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseAutoencoder(6, 10, **kwargs)


def test_wrong_input_width_is_refused():
    with pytest.raises(ValueError, match="d_model=6"):
        random_sae("relu").encode(torch.randn(3, 7))


def test_check_sae_width_names_both_sizes():
    sae = random_sae("relu")
    check_sae_width(sae, 6)
    with pytest.raises(ValueError, match=r"d_model=6 .* hidden size 2304"):
        check_sae_width(sae, 2304)


def assert_same_function(a: SparseAutoencoder, b: SparseAutoencoder) -> None:
    x = torch.randn(7, a.d_model) * 2
    torch.testing.assert_close(a.encode(x), b.encode(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("activation", "k", "apply_b_dec"), CASES)
def test_saelens_round_trip(tmp_path, activation, k, apply_b_dec):
    sae = random_sae(activation, k=k, apply_b_dec_to_input=apply_b_dec, layer=4)
    save_saelens(sae, tmp_path, model_name="tiny")
    loaded = load_sae(tmp_path)
    assert (loaded.activation, loaded.k, loaded.layer, loaded.apply_b_dec_to_input) == (activation, k, 4, apply_b_dec)
    assert_same_function(sae, loaded)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard", "jumprelu": "jumprelu", "topk": "topk"}[activation]
    assert cfg["metadata"]["hook_name"] == cfg["hook_name"] == "blocks.4.hook_resid_post"
    assert (cfg["d_in"], cfg["d_sae"]) == (6, 10)


@pytest.mark.parametrize("activation", ["jumprelu", "relu"])
@pytest.mark.parametrize("apply_b_dec", [False, True])
def test_gemma_scope_round_trip(tmp_path, activation, apply_b_dec):
    sae = random_sae(activation, apply_b_dec_to_input=apply_b_dec)
    folder = tmp_path / "layer_12" / "width_16k" / "average_l0_71"
    save_gemma_scope(sae, folder)
    loaded = load_sae(folder)
    assert (loaded.activation, loaded.layer, loaded.apply_b_dec_to_input) == ("jumprelu", 12, False)
    assert_same_function(sae, loaded)
    assert load_gemma_scope(folder / "params.npz", layer=3).layer == 3


def test_gemma_scope_refuses_topk(tmp_path):
    with pytest.raises(ValueError, match="topk"):
        save_gemma_scope(random_sae("topk", k=2), tmp_path)


def test_gemma_scope_file_written_by_numpy(tmp_path):
    """Gemma Scope's own key names and float32 arrays; encode as in its tutorial: mask(pre > θ) · relu(pre)."""
    rng = np.random.default_rng(0)
    arrays = {
        "W_enc": rng.normal(size=(4, 8)), "W_dec": rng.normal(size=(8, 4)), "b_enc": rng.normal(size=8),
        "b_dec": rng.normal(size=4), "threshold": rng.uniform(0, 1, size=8),
    }
    np.savez(tmp_path / "params.npz", **{n: a.astype(np.float32) for n, a in arrays.items()})
    sae = load_sae(tmp_path / "params.npz")
    assert sae.layer is None
    x = rng.normal(size=(3, 4))
    pre = x @ arrays["W_enc"] + arrays["b_enc"]
    expected = (pre > arrays["threshold"]) * np.maximum(pre, 0)
    torch.testing.assert_close(sae.encode(torch.tensor(x, dtype=torch.float32)).double(),
                               torch.tensor(expected), rtol=1e-5, atol=1e-5)


def write_saelens(folder, cfg, sae: SparseAutoencoder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({n: t.contiguous() for n, t in sae.state_dict().items()}, folder / "sae_weights.safetensors")


def test_saelens_pre_6_topk_config(tmp_path):
    """SAELens < 6: topk is architecture 'standard' with activation_fn_str 'topk' and activation_fn_kwargs.k."""
    sae = random_sae("topk", k=3, apply_b_dec_to_input=True)
    cfg = {"architecture": "standard", "d_in": 6, "d_sae": 10, "activation_fn_str": "topk",
           "activation_fn_kwargs": {"k": 3}, "hook_name": "blocks.5.hook_resid_pre", "hook_layer": 5,
           "apply_b_dec_to_input": True, "normalize_activations": "none", "dtype": "float32"}
    write_saelens(tmp_path, cfg, sae)
    loaded = load_saelens(tmp_path)
    assert (loaded.activation, loaded.k, loaded.layer) == ("topk", 3, 4)  # resid_pre of block 5 = output of 4
    assert_same_function(sae, loaded)


def test_saelens_6_jumprelu_config_defaults_b_dec_subtraction(tmp_path):
    sae = random_sae("jumprelu", apply_b_dec_to_input=True)
    cfg = {"architecture": "jumprelu", "d_in": 6, "d_sae": 10, "metadata": {"hook_name": "blocks.2.hook_mlp_out"}}
    write_saelens(tmp_path, cfg, sae)
    loaded = load_saelens(tmp_path)
    assert loaded.apply_b_dec_to_input and loaded.layer is None  # an MLP-output hook is no residual layer
    assert_same_function(sae, loaded)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"normalize_activations": "expected_average_only_in"}, "normalize_activations"),
        ({"architecture": "gated"}, "gated"),
        ({"activation_fn_str": "tanh-relu"}, "tanh-relu"),
        ({"finetuning_scaling_factor": True}, "finetuning"),
    ],
)
def test_saelens_unsupported_configs_are_refused(tmp_path, extra, message):
    write_saelens(tmp_path, {"architecture": "standard", "d_in": 6, "d_sae": 10, **extra}, random_sae("relu"))
    with pytest.raises(ValueError, match=message):
        load_saelens(tmp_path)


def test_load_sae_without_known_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="params.npz"):
        load_sae(tmp_path)


def naive_pooled(sae: SparseAutoencoder, residual: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(residual.shape[0], sae.d_sae, dtype=torch.float64)
    for n in range(residual.shape[0]):
        positions = [t for t in range(residual.shape[1]) if mask[n, t]]
        for t in positions:
            out[n] += torch.tensor(naive_encode(sae, residual[n, t].double().tolist()), dtype=torch.float64)
        out[n] /= max(len(positions), 1)
    return out


def test_pooled_features_match_oracle_and_ignore_padding():
    sae = random_sae("jumprelu")
    residual = torch.randn(3, 7, sae.d_model)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 2:5] = True  # 3 response tokens after a 2-token prompt, then padding
    mask[1, 1:7] = True
    pooled = pooled_features(sae, residual, mask)  # row 2 has no response tokens
    torch.testing.assert_close(pooled.double(), naive_pooled(sae, residual, mask), rtol=1e-5, atol=1e-5)
    assert (pooled[2] == 0).all()
    padded = torch.cat([residual, 100 * torch.randn(3, 5, sae.d_model)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(pooled_features(sae, padded, padded_mask), pooled)


def test_pooled_features_divide_by_response_length():
    """One feature, identity encoder: the pooled value is the mean of the response positions' inputs."""
    sae = SparseAutoencoder(1, 1, "relu")
    with torch.no_grad():
        sae.W_enc.fill_(1.0)
    residual = torch.tensor([[[5.0], [1.0], [2.0], [3.0], [0.0], [0.0]]])
    mask = torch.tensor([[False, True, True, True, False, False]])
    torch.testing.assert_close(pooled_features(sae, residual, mask), torch.tensor([[2.0]]))


def test_pooled_features_gradient_reaches_response_positions_only():
    sae = random_sae("relu")
    residual = torch.randn(2, 5, sae.d_model, requires_grad=True)
    mask = torch.tensor([[False, True, True, False, False], [True, True, True, True, True]])
    pooled_features(sae, residual, mask).sum().backward()
    assert (residual.grad[~mask] == 0).all()
    assert residual.grad[mask].abs().sum() > 0
    assert math.isfinite(residual.grad.sum().item())


def test_pooled_features_shape_mismatch():
    with pytest.raises(ValueError, match="disagree"):
        pooled_features(random_sae("relu"), torch.randn(2, 5, 6), torch.ones(2, 4, dtype=torch.bool))
