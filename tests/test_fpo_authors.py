"""FPO as its authors' released code computes it (github.com/MikaStars39/FeatureAlignment,
feature_alignment/model/fpo.py): the ``padded_shifted`` pooling against a naive float64 transcription of
``fpo_get_batch_logps``'s feature part, and how it differs from the response mean; the loss and logged rewards of
``FPOModel.loss``; the accuracy its ``get_batch_metrics`` logs against flipped rejected rewards."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_align.metrics import pair_metrics
from lit_align.models.layout import PACKED
from lit_align.models.policy import PolicySpec
from lit_align.module import AlignmentModule
from lit_align.objectives import FPO
from lit_align.objectives.base import PreferenceInputs
from lit_align.objectives.fpo import flipped_accuracy, fpo_loss, topk_feature_mse
from lit_align.reference.fingerprint import sae_fingerprint
from lit_align.sae import SAEFeatures, SparseAutoencoder, pooled_features
from tests.test_fpo_module import TOP_K, built, perturb, write_sae
from tests.test_module import make_data
from tests.test_sae import random_sae


def authors_pooled(sae: SparseAutoencoder, hidden: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """``fm = sae.encode(hidden)``; ``fm = fm[:, :-1]``; ``(fm * loss_mask[..., None]).mean(dim=1)`` with
    ``loss_mask = labels[:, 1:] != -100``, i.e. the response mask shifted left by one; in float64."""
    fm = copy.deepcopy(sae).double().encode(hidden.double())[:, :-1]
    loss_mask = response_mask[:, 1:].double()
    return (fm * loss_mask.unsqueeze(-1)).mean(dim=1)


def test_padded_shifted_matches_the_authors_pooling():
    sae = random_sae("jumprelu")
    hidden = torch.randn(3, 9, sae.d_model)
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[0, 3:6] = True  # prompt, 3 response tokens, padding
    mask[1, 2:9] = True
    mask[2, 5:7] = True
    ours = pooled_features(sae, hidden, mask, pooling="padded_shifted")
    torch.testing.assert_close(ours.double(), authors_pooled(sae, hidden, mask), rtol=1e-5, atol=1e-6)
    # the response mean reads other positions and divides by the response length: a different scale
    response = pooled_features(sae, hidden, mask)
    assert not torch.allclose(response, ours, atol=1e-3)


def test_padded_shifted_scale_depends_on_the_batch_padding():
    """One feature, identity encoder: response [2, 3] after prompt [5]; the authors' value is the sum of the
    inputs at the positions predicting the response (5 and 2) over T - 1."""
    sae = SparseAutoencoder(1, 1, "relu")
    with torch.no_grad():
        sae.W_enc.fill_(1.0)
    hidden = torch.tensor([[[5.0], [2.0], [3.0]]])
    mask = torch.tensor([[False, True, True]])
    torch.testing.assert_close(pooled_features(sae, hidden, mask, pooling="padded_shifted"), torch.tensor([[3.5]]))
    padded = torch.cat([hidden, torch.zeros(1, 4, 1)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(pooled_features(sae, padded, padded_mask, pooling="padded_shifted"),
                               torch.tensor([[7.0 / 6]]))
    torch.testing.assert_close(pooled_features(sae, padded, padded_mask), torch.tensor([[2.5]]))
    with pytest.raises(ValueError, match="pooling"):
        pooled_features(sae, hidden, mask, pooling="mean")


def authors_loss(m_w, m_l, d_w, d_l, beta, alpha):
    """FPOModel.loss of the authors' code, in float64: logits = (m_w - m_l) - α (D_l - D_w) (D_w detached),
    losses = -log σ(β logits), rewards = β (m + D)."""
    losses = -torch.nn.functional.logsigmoid(beta * ((m_w - m_l) - alpha * (d_l - d_w)))
    return losses, beta * (m_w + d_w), beta * (m_l + d_l)


def test_fpo_loss_reward_options_match_the_authors_logging():
    torch.manual_seed(0)
    n, width, k = 5, 12, 4
    means = [torch.randn(n, dtype=torch.float64) for _ in range(4)]
    features = [torch.rand(n, width, dtype=torch.float64) for _ in range(4)]
    ours = fpo_loss(*means, *features, beta=0.1, alpha=0.5, top_k=k, reward="margin_plus_feature")
    d_w, d_l = (topk_feature_mse(features[i], features[i + 2], k) for i in (0, 1))
    expected = authors_loss(means[0] - means[2], means[1] - means[3], d_w, d_l, 0.1, 0.5)
    for got, want in zip(ours, expected, strict=True):
        torch.testing.assert_close(got, want)
    default = fpo_loss(*means, *features, beta=0.1, alpha=0.5, top_k=k)
    torch.testing.assert_close(default[0], ours[0])  # same loss
    torch.testing.assert_close(default[1], 0.1 * (means[0] - means[2]))  # β m
    with pytest.raises(ValueError, match="reward"):
        fpo_loss(*means, *features, beta=0.1, alpha=0.5, top_k=k, reward="beta_m")
    with pytest.raises(ValueError, match="pooling"):
        SAEFeatures("unused", pooling="padded")
    with pytest.raises(ValueError, match="site"):
        SAEFeatures("unused", site="final")


def test_relative_feature_mse_is_scale_free_and_matches_naive():
    torch.manual_seed(1)
    policy, reference = torch.rand(3, 10, dtype=torch.float64), torch.rand(3, 10, dtype=torch.float64)
    relative = topk_feature_mse(policy, reference, 4, relative=True)
    for row in range(3):
        top = sorted(range(10), key=lambda i: -policy[row, i].item())[:4]
        mse = sum((policy[row, i] - reference[row, i]).item() ** 2 for i in top) / 4
        scale = sum(reference[row, i].item() ** 2 for i in top) / 4
        assert relative[row].item() == pytest.approx(mse / (scale + 1e-8), rel=1e-9)
    # a feature space 1000 times larger: D grows 10⁶ times, D_rel does not move
    torch.testing.assert_close(topk_feature_mse(1000 * policy, 1000 * reference, 4, relative=True), relative)
    torch.testing.assert_close(topk_feature_mse(1000 * policy, 1000 * reference, 4),
                               1e6 * topk_feature_mse(policy, reference, 4))


def test_authors_reading_through_the_module(model_dir, tokenizer_dir, explicit_file, tmp_path):
    """FPO(features=SAEFeatures(..., site="final_norm", pooling="padded_shifted"), reward="margin_plus_feature")
    through AlignmentModule
    equals the authors' forward: SAE of ``hidden_states[-1]`` (post-norm), ``fm[:, :-1]`` masked, mean over the
    padded length, top-k MSE, rewards β (m + D); policy moved away from the frozen reference."""
    data = make_data(explicit_file, tokenizer_dir, val_fraction=0.0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    features = SAEFeatures(write_sae(tmp_path / "sae"), site="final_norm", pooling="padded_shifted")
    objective = FPO(features=features, top_k=TOP_K, reward="margin_plus_feature")
    module = built(AlignmentModule(objective, PolicySpec(path=model_dir)))
    perturb(module)
    output = module(batch)
    assert PACKED not in module.pair_view(batch)  # the padded-length pooling keeps the padded layout
    sae = module.feature_extractor.sae
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        features = []
        for model in (module.policy, reference):
            out = model(batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
            fm = copy.deepcopy(sae).double().encode(out.hidden_states[-1].double())[:, :-1]
            loss_mask = batch["response_mask"][:, 1:].double()
            features.append((fm * loss_mask.unsqueeze(-1)).mean(dim=1))
    policy, ref = features
    d = topk_feature_mse(policy, ref, TOP_K)
    d_w, d_l = d.chunk(2)
    chosen_d, rejected_d = output.metrics["feature_mse/chosen"], output.metrics["feature_mse/rejected"]
    torch.testing.assert_close(chosen_d.double(), d_w, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(rejected_d.double(), d_l, rtol=1e-4, atol=1e-9)
    assert d_w.abs().sum() > 0
    inputs = module.preference_inputs(batch)
    m_w = (inputs.policy_chosen_logps - inputs.ref_chosen_logps) / inputs.chosen_lengths
    torch.testing.assert_close(output.chosen_rewards.double(), (0.1 * (m_w.detach() + chosen_d)).double())


def test_store_fingerprint_records_only_non_default_site_and_pooling(model_dir, tmp_path):
    """A store of the default reading still matches an extractor of the defaults; the authors' reading differs."""
    path = write_sae(tmp_path / "sae")
    prints = []
    for options in ({}, {"site": "final_norm"}, {"pooling": "padded_shifted"}):
        module = built(AlignmentModule(FPO(features=SAEFeatures(path, **options), top_k=TOP_K),
                                       PolicySpec(path=model_dir)))
        prints.append(sae_fingerprint(module.feature_extractor))
        assert module.feature_extractor.packs == ("pooling" not in options)
    assert set(prints[0]) == {"weights", "layer", "d_sae"}
    assert prints[1]["site"] == "final_norm" and "pooling" not in prints[1]
    assert prints[2]["pooling"] == "padded_shifted" and prints[2] != prints[0]


def test_flipped_accuracy_is_the_authors_logged_accuracy_beside_the_correct_one():
    """The authors' get_batch_metrics logs ``(chosen_rewards > rejected_rewards.flip(dims=[0])).float()`` as
    ``rewards/accuracies``: each chosen reward against another pair's rejected one. ``FPO(flipped_accuracy=True)``
    logs it as ``rewards/accuracies_flipped``, beside the correct per-pair accuracy."""
    chosen, rejected = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 1.0, 2.5])
    assert flipped_accuracy(chosen, rejected).tolist() == [0.0, 1.0, 1.0]  # 1 > 2.5, 2 > 1, 3 > 0
    assert (chosen > rejected).float().tolist() == [1.0, 1.0, 1.0]  # every pair is ranked right
    generator = torch.Generator().manual_seed(4)
    summed = [-40 * torch.rand(6, generator=generator) for _ in range(4)]
    lengths = [torch.randint(1, 30, (6,), generator=generator).float() for _ in range(2)]
    features = [torch.rand(6, 32, generator=generator) for _ in range(4)]
    inputs = PreferenceInputs(summed[0], summed[1], lengths[0], lengths[1], summed[2], summed[3],
                              policy_chosen_features=features[0], policy_rejected_features=features[1],
                              ref_chosen_features=features[2], ref_rejected_features=features[3])
    output = FPO("unused", top_k=10, reward="margin_plus_feature", flipped_accuracy=True)(inputs)
    authors = (output.chosen_rewards > output.rejected_rewards.flip(dims=[0])).float()
    logged = pair_metrics(output, summed[0], summed[1])
    torch.testing.assert_close(logged["rewards/accuracies_flipped"], authors)
    torch.testing.assert_close(logged["rewards/accuracies"], (output.chosen_rewards > output.rejected_rewards).float())
    assert not torch.equal(logged["rewards/accuracies_flipped"], logged["rewards/accuracies"])
    assert "rewards/accuracies_flipped" not in FPO("unused", top_k=10)(inputs).metrics  # off by default
