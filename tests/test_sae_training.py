"""SAE training: loss and metrics against float64 oracles, activation collection, a short fit, and
``tools/train_sae.py`` end to end on a tiny Llama."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lit_align.sae import (
    ReconstructionMetrics,
    SAETrainer,
    SparseAutoencoder,
    collect_activations,
    load_sae,
    read_texts,
    residual_stream,
    sae_loss,
)

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    {"prompt": "Human: how do birds fly? Assistant:", "chosen": " with wings and air", "rejected": " no idea"},
    {"prompt": "Human: name a colour. Assistant:", "chosen": " blue like the sky", "rejected": " a fish"},
    {"prompt": "Human: what is two plus two? Assistant:", "chosen": " it is four", "rejected": " five"},
    {"prompt": "Human: say hello. Assistant:", "chosen": " hello there friend", "rejected": " go away"},
] * 4


def random_sae(activation: str, k: int | None = None) -> SparseAutoencoder:
    torch.manual_seed(0)
    sae = SparseAutoencoder(5, 8, activation, k=k, apply_b_dec_to_input=True)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_()
    return sae


def naive_loss(sae: SparseAutoencoder, x: torch.Tensor, l1: float) -> float:
    """``mean_n [ Σ_j (x̂_j - x_j)² + λ Σ_i f_i ‖W_dec,i‖ ]`` with explicit loops in float64."""
    total = 0.0
    w_dec = sae.W_dec.double().tolist()
    for row in x.double():
        f = sae.encode(row.float()).double().tolist()
        x_hat = [sum(f[i] * w_dec[i][j] for i in range(len(f))) + sae.b_dec[j].item() for j in range(len(row))]
        total += sum((x_hat[j] - row[j].item()) ** 2 for j in range(len(row)))
        total += l1 * sum(f[i] * math.sqrt(sum(w * w for w in w_dec[i])) for i in range(len(f)))
    return total / len(x)


@pytest.mark.parametrize(("activation", "k", "l1"), [("topk", 3, 0.0), ("relu", None, 0.7)])
def test_sae_loss_matches_oracle(activation, k, l1):
    sae = random_sae(activation, k)
    x = torch.randn(6, 5)
    loss, x_hat, features = sae_loss(sae, x, l1)
    assert math.isclose(loss.item(), naive_loss(sae, x, l1), rel_tol=1e-5)
    torch.testing.assert_close(x_hat, sae(x))
    torch.testing.assert_close(features, sae.encode(x))


def test_relu_penalty_is_invariant_to_decoder_rescaling():
    """Scaling f_i by c and W_dec,i by 1/c leaves x̂ and the penalty unchanged (the point of the norm weighting)."""
    sae = random_sae("relu")
    x = torch.randn(4, 5)
    before = sae_loss(sae, x, 0.5)[0]
    with torch.no_grad():
        sae.W_enc[:, 2] *= 3.0
        sae.b_enc[2] *= 3.0
        sae.W_dec[2] /= 3.0
    torch.testing.assert_close(sae_loss(sae, x, 0.5)[0], before)


def test_reconstruction_metrics_accumulate_like_the_whole_set():
    torch.manual_seed(0)
    xs = [torch.randn(n, 5) * 3 + 1 for n in (4, 7, 2)]
    x_hats = [x + 0.5 * torch.randn_like(x) for x in xs]
    features = [torch.relu(torch.randn(len(x), 8)) * (torch.rand(len(x), 8) < 0.3) for x in xs]
    features[0][:, 7] = 0
    features[1][:, 7] = 0
    features[2][:, 7] = 0
    metric = ReconstructionMetrics(5, 8)
    for batch in zip(xs, x_hats, features, strict=True):
        metric.update(*batch)
    values = metric.compute()
    x, x_hat, f = (torch.cat(t).double() for t in (xs, x_hats, features))
    n, d = x.shape
    mean = [sum(x[i, j].item() for i in range(n)) / n for j in range(d)]
    sse = sum((x[i, j].item() - x_hat[i, j].item()) ** 2 for i in range(n) for j in range(d))
    sst = sum((x[i, j].item() - mean[j]) ** 2 for i in range(n) for j in range(d))
    active = sum(1 for i in range(n) for m in range(8) if f[i, m] > 0)
    dead = sum(1 for m in range(8) if all(f[i, m] == 0 for i in range(n))) / 8
    assert math.isclose(values["mse"].item(), sse / (n * d), rel_tol=1e-9)
    assert math.isclose(values["explained_variance"].item(), 1 - sse / sst, rel_tol=1e-9)
    assert math.isclose(values["l0"].item(), active / n, rel_tol=1e-9)
    assert math.isclose(values["dead_fraction"].item(), dead, rel_tol=1e-9) and dead >= 1 / 8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "relu"}, "l1_coefficient > 0"),
        ({"activation": "topk", "k": 4, "l1_coefficient": 1.0}, "no L1"),
        ({"activation": "jumprelu"}, "activation"),
        ({"activation": "topk"}, "k="),
        ({"activation": "topk", "k": 4, "lr": 0.0}, "lr"),
    ],
)
def test_trainer_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SAETrainer(8, 16, **kwargs)


def sparse_data(n: int, d_model: int = 16, atoms: int = 32, active: int = 3) -> torch.Tensor:
    """Each row a non-negative combination of ``active`` of ``atoms`` fixed directions, plus an offset."""
    generator = torch.Generator().manual_seed(0)
    dictionary = torch.nn.functional.normalize(torch.randn(atoms, d_model, generator=generator), dim=-1)
    codes = torch.zeros(n, atoms)
    chosen = torch.rand(n, atoms, generator=generator).argsort(dim=1)[:, :active]
    codes.scatter_(1, chosen, torch.rand(n, active, generator=generator) * 2 + 0.5)
    return codes @ dictionary + 0.3


def test_short_fit_learns_sparse_data_and_keeps_unit_decoder_rows():
    torch.manual_seed(0)
    train, val = sparse_data(4096), sparse_data(512)
    module = SAETrainer(16, 64, activation="topk", k=4, lr=3e-3)
    with torch.no_grad():
        module.sae.b_dec.copy_(train.mean(dim=0))
    trainer = L.Trainer(max_steps=150, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    loader = DataLoader(val, batch_size=256)
    before = trainer.validate(module, loader, verbose=False)[0]
    trainer.fit(module, DataLoader(train, batch_size=128, shuffle=True))
    after = trainer.validate(module, loader, verbose=False)[0]
    assert after["val/explained_variance"] > max(0.8, before["val/explained_variance"] + 0.3)
    assert after["val/l0"] <= 4
    torch.testing.assert_close(module.sae.W_dec.norm(dim=1), torch.ones(64))


def word_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "<unk>"]))
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="right")


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("policy")
    tokenizer = word_tokenizer([row["prompt"] + row["chosen"] for row in ROWS])
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_read_texts_field_priority(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    rows = [{"text": "plain", "chosen": "ignored"}, {"prompt": "P ", "chosen": "C", "rejected": "R"},
            {"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "..."}]
    with gzip.open(path, "wt") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)
    assert read_texts(path) == ["plain", "P C", "\n\nHuman: hi\n\nAssistant: yo"]
    assert read_texts(path, limit=1) == ["plain"]


def test_collect_activations_keeps_content_tokens_only(tiny_policy):
    model = AutoModelForCausalLM.from_pretrained(tiny_policy).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy)
    texts = ["hello there friend", "it is four and blue like the sky"]  # 3 and 8 words, padded to 9 with BOS
    rows = collect_activations(model, tokenizer, texts, layer=1, batch_size=2)
    assert rows.shape == (11, 32)
    encoded = tokenizer(texts[1], return_tensors="pt")
    with torch.no_grad():
        alone = residual_stream(model, 1, encoded["input_ids"])[0, 1:]  # drop BOS
    torch.testing.assert_close(rows[3:], alone, rtol=1e-5, atol=1e-5)
    assert collect_activations(model, tokenizer, texts, layer=1, batch_size=1, max_tokens=2).shape == (2, 32)


def load_tool():
    spec = importlib.util.spec_from_file_location("train_sae", ROOT / "tools" / "train_sae.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_sae_tool_end_to_end(tiny_policy, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    output = tmp_path / "sae"
    metrics = load_tool().main([
        "--model", str(tiny_policy), "--data", str(data), "--layer", "1", "--output", str(output),
        "--d-sae", "64", "--k", "8", "--batch-size", "32", "--max-steps", "30", "--val-fraction", "0.2",
        "--accelerator", "cpu",
    ])
    assert {"val/mse", "val/explained_variance", "val/l0", "val/dead_fraction"} <= set(metrics)
    assert all(math.isfinite(value) for value in metrics.values())
    assert 0 < metrics["val/l0"] <= 8 and metrics["val/explained_variance"] <= 1
    sae = load_sae(output)
    assert (sae.d_model, sae.d_sae, sae.activation, sae.k, sae.layer) == (32, 64, "topk", 8, 1)
    saved = json.loads((output / "metrics.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_policy)
    content_tokens = sum(len(tokenizer(row["prompt"] + row["chosen"]).input_ids) - 1 for row in ROWS)  # no BOS
    assert saved["d_model"] == 32 and saved["train_tokens"] + saved["val_tokens"] == content_tokens
    assert saved["val/explained_variance"] == pytest.approx(metrics["val/explained_variance"])
    assert (output / "logs").is_dir()
