"""TDPO (Zeng et al. 2024): loss against a float64 oracle, stop-gradient behaviour, the Objective class."""

from __future__ import annotations

import argparse
import copy
import math

import pytest
import torch
from jsonargparse import ArgumentParser
from transformers import LlamaConfig, LlamaForCausalLM

from lit_align.models.token_kl import sequence_logps_and_kl
from lit_align.objectives import TDPO, PreferenceInputs
from lit_align.objectives.functional import tdpo_loss


def naive_tdpo(pc, pr, rc, rr, kl_c, kl_r, beta, alpha, variant):
    """Straight from the paper, one pair at a time in Python floats:
    u = β (pc - rc) - β (pr - rr); δ = β KL(y_l) - β KL(y_w); TDPO1: -log σ(u - δ); TDPO2: -log σ(u - α δ).
    (The stop-gradient of TDPO2 changes no value.) Rewards: β (log-ratio + SeqKL), as in the authors' code."""
    losses, chosen, rejected = [], [], []
    for i in range(len(pc)):
        u = beta * (pc[i] - rc[i]) - beta * (pr[i] - rr[i])
        delta = beta * kl_r[i] - beta * kl_c[i]
        z = u - delta if variant == 1 else u - alpha * delta
        losses.append(math.log(1.0 + math.exp(-z)))
        chosen.append(beta * (pc[i] - rc[i] + kl_c[i]))
        rejected.append(beta * (pr[i] - rr[i] + kl_r[i]))
    return [torch.tensor(values, dtype=torch.float64) for values in (losses, chosen, rejected)]


def random_inputs(seed: int, batch: int = 16) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logps = [-20 * torch.rand(batch, generator=generator, dtype=torch.float64) for _ in range(4)]
    seq_kls = [3 * torch.rand(batch, generator=generator, dtype=torch.float64) for _ in range(2)]
    return logps + seq_kls


@pytest.mark.parametrize("variant", [1, 2])
@pytest.mark.parametrize(("beta", "alpha"), [(0.1, 0.5), (0.5, 0.2), (0.05, 1.0)])
def test_matches_naive_on_random_inputs(variant, beta, alpha):
    inputs = random_inputs(seed=variant)
    got = tdpo_loss(*inputs, beta=beta, alpha=alpha, variant=variant)
    want = naive_tdpo(*[x.tolist() for x in inputs], beta, alpha, variant)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("variant", "loss"), [(1, 0.3711006659477777), (2, 0.3411538747320878)])
def test_hand_worked_case(variant, loss):
    # log-ratios: chosen -1 - (-2) = 1, rejected -3 - (-2) = -1, so u = β · 2; SeqKL: chosen 0.3, rejected 0.7
    # TDPO1: 0.5 (2 - (0.7 - 0.3)) = 0.8; TDPO2: 0.5 (2 - 0.5 (0.7 - 0.3)) = 0.9; loss = log(1 + e^-z)
    tensors = [torch.tensor([v], dtype=torch.float64) for v in (-1.0, -3.0, -2.0, -2.0, 0.3, 0.7)]
    losses, chosen, rejected = tdpo_loss(*tensors, beta=0.5, alpha=0.5, variant=variant)
    assert losses.item() == pytest.approx(loss, abs=1e-14)
    assert chosen.item() == pytest.approx(0.5 * (1.0 + 0.3))  # rewards carry SeqKL but not α
    assert rejected.item() == pytest.approx(0.5 * (-1.0 + 0.7))


def test_tdpo1_ignores_alpha():
    inputs = random_inputs(seed=3)
    a = tdpo_loss(*inputs, beta=0.1, alpha=0.1, variant=1)
    b = tdpo_loss(*inputs, beta=0.1, alpha=0.9, variant=1)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("variant", [1, 2])
def test_seq_kl_gradients(variant):
    """TDPO2 sends no gradient through SeqKL(y_w); TDPO1 does. dL/dz = -σ(-z)."""
    beta, alpha = 0.3, 0.5
    inputs = random_inputs(seed=4, batch=5)
    for tensor in inputs:
        tensor.requires_grad_()
    losses, chosen_rewards, rejected_rewards = tdpo_loss(*inputs, beta=beta, alpha=alpha, variant=variant)
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    losses.sum().backward()
    pc, pr, rc, rr, kl_c, kl_r = (x.detach() for x in inputs)
    weight = 1.0 if variant == 1 else alpha
    z = beta * ((pc - rc) - (pr - rr) - weight * (kl_r - kl_c))
    dloss_dz = -torch.sigmoid(-z)
    torch.testing.assert_close(inputs[0].grad, beta * dloss_dz)
    torch.testing.assert_close(inputs[1].grad, -beta * dloss_dz)
    torch.testing.assert_close(inputs[5].grad, -weight * beta * dloss_dz)
    if variant == 1:
        torch.testing.assert_close(inputs[4].grad, beta * dloss_dz)
        assert (inputs[4].grad.abs() > 0).all()
    else:
        assert inputs[4].grad is None, "TDPO2 must detach SeqKL(y_w)"


def test_rejects_unknown_variant_in_function():
    with pytest.raises(ValueError, match="variant"):
        tdpo_loss(*random_inputs(seed=5), beta=0.1, variant=3)


def _preference_inputs(seed: int) -> PreferenceInputs:
    pc, pr, rc, rr, kl_c, kl_r = random_inputs(seed, batch=4)
    lengths = torch.full((4,), 7.0)
    return PreferenceInputs(pc, pr, lengths, lengths, rc, rr, kl_c.requires_grad_(), kl_r)


@pytest.mark.parametrize("variant", [1, 2])
def test_objective_matches_function_and_reports_kl_metrics(variant):
    objective = TDPO(variant=variant, beta=0.2, alpha=0.4)
    inputs = _preference_inputs(seed=6)
    out = objective(inputs)
    want = tdpo_loss(
        inputs.policy_chosen_logps,
        inputs.policy_rejected_logps,
        inputs.ref_chosen_logps,
        inputs.ref_rejected_logps,
        inputs.chosen_seq_kl,
        inputs.rejected_seq_kl,
        beta=0.2,
        alpha=0.4,
        variant=variant,
    )
    for g, w in zip((out.losses, out.chosen_rewards, out.rejected_rewards), want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert set(out.metrics) == {"kl/chosen", "kl/rejected", "kl/margin"}
    torch.testing.assert_close(out.metrics["kl/chosen"], inputs.chosen_seq_kl.detach())
    torch.testing.assert_close(out.metrics["kl/rejected"], inputs.rejected_seq_kl)
    torch.testing.assert_close(
        out.metrics["kl/margin"], (inputs.chosen_seq_kl - inputs.rejected_seq_kl).detach()
    )
    assert all(metric.shape == (4,) and not metric.requires_grad for metric in out.metrics.values())


def test_objective_declares_needs_and_refuses_missing_token_kl():
    assert TDPO.needs == frozenset({"reference_logps", "token_kl"})
    inputs = _preference_inputs(seed=7)
    inputs.rejected_seq_kl = None
    with pytest.raises(ValueError, match="rejected_seq_kl"):
        TDPO()(inputs)


def test_defaults_follow_the_paper():
    objective = TDPO()
    assert (objective.variant, objective.beta, objective.alpha) == (2, 0.1, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"variant": 3}, "variant"), ({"beta": 0.0}, "beta"), ({"alpha": -0.5}, "alpha")]
)
def test_rejects_invalid_hyperparameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TDPO(**kwargs)


def test_cli_types_reject_invalid_values():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(TDPO, "tdpo")
    assert parser.parse_args(["--tdpo.variant=1"]).tdpo.variant == 1
    for key, bad in (("variant", "3"), ("alpha", "0"), ("beta", "-1")):
        with pytest.raises(argparse.ArgumentError, match=f"tdpo.{key}"):
            parser.parse_args([f"--tdpo.{key}={bad}"])


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


def _tdpo_step(policy, reference, variant: int):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(64, (4, 12), generator=generator)
    response_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    response_mask[:, 5:] = True
    response_mask[1, 9:] = False
    hidden = policy.get_decoder()(input_ids).last_hidden_state
    with torch.no_grad():
        ref_hidden = reference.get_decoder()(input_ids).last_hidden_state
    token_kl = sequence_logps_and_kl(
        hidden,
        policy.get_output_embeddings(),
        ref_hidden,
        reference.get_output_embeddings(),
        input_ids,
        response_mask,
        chunk_size=5,
    )
    lengths = response_mask.sum(-1).float()
    inputs = PreferenceInputs(
        token_kl.policy_logps[:2],
        token_kl.policy_logps[2:],
        lengths[:2],
        lengths[2:],
        token_kl.ref_logps[:2],
        token_kl.ref_logps[2:],
        token_kl.seq_kl[:2],
        token_kl.seq_kl[2:],
    )
    return TDPO(variant=variant)(inputs)


@pytest.mark.parametrize("variant", [1, 2])
def test_policy_equal_to_reference_gives_log_2_and_zero_kl(variant):
    policy = _tiny_llama()
    out = _tdpo_step(policy, copy.deepcopy(policy), variant)
    torch.testing.assert_close(out.losses, torch.full((2,), math.log(2.0)), rtol=0, atol=1e-6)
    for metric in out.metrics.values():
        torch.testing.assert_close(metric, torch.zeros(2), rtol=0, atol=1e-6)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)


def test_training_step_with_a_different_reference_has_finite_gradients():
    policy, reference = _tiny_llama(), _tiny_llama()
    with torch.no_grad():
        reference.get_output_embeddings().weight.mul_(3.0)
    out = _tdpo_step(policy, reference, variant=2)
    assert (out.metrics["kl/chosen"] > 0).all() and (out.metrics["kl/rejected"] > 0).all()
    out.loss.backward()
    head_grad = policy.get_output_embeddings().weight.grad
    assert head_grad is not None and torch.isfinite(head_grad).all() and head_grad.abs().sum() > 0
    assert reference.get_output_embeddings().weight.grad is None
