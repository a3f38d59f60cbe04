"""WPO and LD-DPO as options of :class:`~lit_align.objectives.PairwiseObjective`: against naive float64 loops of the
papers' equations, hand-worked values, their composition with shapes and divergences, the refusals, and TRL's own
``DPOTrainer._compute_loss`` on two real tiny Llamas (skipped without TRL)."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lit_align.objectives import Mixture, PairwiseObjective, PreferenceInputs
from lit_align.objectives.functional import pair_desensitised_logps, pairwise_loss, wpo_weights


def left_aligned(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's masked values moved to the front, zero after: response token t in column t."""
    out = per_token.new_zeros(per_token.shape)
    for row in range(per_token.shape[0]):
        values = per_token[row][mask[row]]
        out[row, : len(values)] = values
    return out


def inputs_from_logits(policy_logits, ref_logits, input_ids, completion_mask) -> PreferenceInputs:
    """What the module would hand over: shifted per-token log-probs of the response tokens (rows: chosen, then
    rejected), left-aligned, their sums, the lengths and the policy's ``Σ_t log Σ_v π(v)²``."""
    mask = completion_mask[:, 1:].bool()
    targets = input_ids[:, 1:].unsqueeze(-1)

    def per_token(logits):
        return logits[:, :-1].log_softmax(-1).gather(-1, targets).squeeze(-1) * mask

    policy, ref = per_token(policy_logits), per_token(ref_logits)
    collision = (2 * policy_logits[:, :-1].log_softmax(-1)).logsumexp(-1) * mask
    lengths = mask.sum(-1).to(policy.dtype)
    return PreferenceInputs(
        *policy.sum(-1).chunk(2), *lengths.chunk(2), *ref.sum(-1).chunk(2),
        policy_chosen_token_logps=left_aligned(policy, mask).chunk(2)[0],
        policy_rejected_token_logps=left_aligned(policy, mask).chunk(2)[1],
        ref_chosen_token_logps=left_aligned(ref, mask).chunk(2)[0],
        ref_rejected_token_logps=left_aligned(ref, mask).chunk(2)[1],
        chosen_log_collision=collision.sum(-1).detach().chunk(2)[0],
        rejected_log_collision=collision.sum(-1).detach().chunk(2)[1],
    )


def random_batch(pairs=4, prompt=3, longest=6, vocab=11, dtype=torch.float64, seed=0):
    """Random logits of policy and reference, ids and a completion mask (prompt, response, right padding)."""
    gen = torch.Generator().manual_seed(seed)
    total = prompt + longest + 1
    lengths = torch.randint(1, longest + 1, (2 * pairs,), generator=gen)
    lengths[0], lengths[pairs] = longest, 1  # one very uneven pair
    positions = torch.arange(total)
    completion = (positions >= prompt) & (positions < prompt + lengths.unsqueeze(-1))
    attention = positions < prompt + lengths.unsqueeze(-1)
    ids = torch.randint(0, vocab, (2 * pairs, total), generator=gen)
    policy = torch.randn(2 * pairs, total, vocab, generator=gen, dtype=dtype)
    ref = torch.randn(2 * pairs, total, vocab, generator=gen, dtype=dtype)
    return policy, ref, ids, completion.long(), attention.long()


def naive_ld(token_logps: list[float], shared: int, ld_alpha: float) -> float:
    """LD-DPO Eq. 12 for one response, a plain loop."""
    return sum(lp if t < shared else ld_alpha * lp for t, lp in enumerate(token_logps))


def naive_wpo_weight(logits: torch.Tensor, ids: torch.Tensor, completion: torch.Tensor) -> float:
    """WPO Eq. 3 for one response: exp of the mean over its tokens of ``log π(y_t) − log Σ_v π(v)²``, a plain loop."""
    terms = []
    for t in range(1, len(ids)):
        if completion[t]:
            probs = logits[t - 1].double().softmax(-1)
            terms.append(math.log(probs[ids[t]]) - math.log(float((probs**2).sum())))
    return math.exp(sum(terms) / len(terms))


def test_desensitised_logps_match_a_loop():
    policy, ref, ids, completion, _ = random_batch()
    inputs = inputs_from_logits(policy, ref, ids, completion)
    chosen, rejected = pair_desensitised_logps(inputs.policy_chosen_token_logps, inputs.policy_rejected_token_logps,
                                               inputs.chosen_lengths, inputs.rejected_lengths, 0.3)
    for i in range(len(chosen)):
        lw, ll = int(inputs.chosen_lengths[i]), int(inputs.rejected_lengths[i])
        shared = min(lw, ll)
        want_w = naive_ld(inputs.policy_chosen_token_logps[i, :lw].tolist(), shared, 0.3)
        want_l = naive_ld(inputs.policy_rejected_token_logps[i, :ll].tolist(), shared, 0.3)
        assert chosen[i].item() == pytest.approx(want_w, rel=1e-12, abs=1e-12)
        assert rejected[i].item() == pytest.approx(want_l, rel=1e-12, abs=1e-12)


def test_wpo_weights_match_a_loop():
    policy, ref, ids, completion, _ = random_batch()
    inputs = inputs_from_logits(policy, ref, ids, completion)
    weights = wpo_weights(inputs.policy_chosen_logps, inputs.policy_rejected_logps, inputs.chosen_log_collision,
                          inputs.rejected_log_collision, inputs.chosen_lengths, inputs.rejected_lengths)
    n = len(weights)
    for i in range(n):
        want = naive_wpo_weight(policy[i], ids[i], completion[i]) * naive_wpo_weight(policy[n + i], ids[n + i],
                                                                                     completion[n + i])
        assert weights[i].item() == pytest.approx(want, rel=1e-10)


def hand_inputs(**extra) -> PreferenceInputs:
    """One pair: chosen tokens log-probs −1, −2, −3; rejected −1, −1; reference all zero."""
    chosen, rejected = torch.tensor([[-1.0, -2.0, -3.0]]), torch.tensor([[-1.0, -1.0, 0.0]])
    zeros = torch.zeros(1, 3)
    return PreferenceInputs(
        torch.tensor([-6.0]), torch.tensor([-2.0]), torch.tensor([3.0]), torch.tensor([2.0]), torch.zeros(1),
        torch.zeros(1), policy_chosen_token_logps=chosen, policy_rejected_token_logps=rejected,
        ref_chosen_token_logps=zeros, ref_rejected_token_logps=zeros, **extra,
    )


def test_hand_worked_ld_dpo():
    """ℓ_p = 2: chosen −1 − 2 + ½(−3) = −4.5, rejected −2; DPO with β = 1: −log σ(−2.5) = log(1 + e^2.5)."""
    output = PairwiseObjective(beta=1.0, ld_alpha=0.5)(hand_inputs())
    assert output.losses.item() == pytest.approx(math.log1p(math.exp(2.5)), rel=1e-6)
    assert output.chosen_rewards.item() == pytest.approx(-4.5)
    plain = PairwiseObjective(beta=1.0, ld_alpha=1.0)(hand_inputs())  # α = 1 is plain DPO: −log σ(−4)
    assert plain.losses.item() == pytest.approx(math.log1p(math.exp(4.0)), rel=1e-6)


def test_hand_worked_wpo():
    """A uniform policy over 4 tokens: π(y_t) = Σ_v π(v)² = ¼, so the aligned weight is exactly 1 and the loss is
    DPO's, −log σ(3 log ¼ − 2 log ¼) = log 5; a peaked policy (Σ_v π(v)² = ½ at each token) with the hand pair's
    log-probs weighs exp((−6 − 3 log ½)/3) · exp((−2 − 2 log ½)/2)."""
    uniform = torch.tensor([3 * math.log(0.25)]), torch.tensor([2 * math.log(0.25)])
    inputs = hand_inputs(chosen_log_collision=uniform[0], rejected_log_collision=uniform[1])
    inputs.policy_chosen_logps, inputs.policy_rejected_logps = uniform
    output = PairwiseObjective(beta=1.0, wpo=True)(inputs)
    assert output.metrics["wpo/weight"].item() == pytest.approx(1.0)
    assert output.losses.item() == pytest.approx(math.log(5.0), rel=1e-6)
    peaked = hand_inputs(chosen_log_collision=torch.tensor([3 * math.log(0.5)]),
                         rejected_log_collision=torch.tensor([2 * math.log(0.5)]))
    weight = PairwiseObjective(beta=1.0, wpo=True)(peaked).metrics["wpo/weight"].item()
    assert weight == pytest.approx(math.exp((-6 - 3 * math.log(0.5)) / 3 + (-2 - 2 * math.log(0.5)) / 2))


COMPOSED = [
    ("sigmoid", "reverse_kl", 0.5, True),
    ("ipo", "js", 0.3, True),
    ("sigmoid_norm", "alpha", 0.0, False),
    ("hinge", "forward_kl", None, True),
    ("robust", "reverse_kl", 1.0, True),
    ("apo_zero", "reverse_kl", 0.7, False),
]


@pytest.mark.parametrize(("shape", "divergence", "ld_alpha", "wpo"), COMPOSED)
def test_composes_with_shapes_and_divergences(shape, divergence, ld_alpha, wpo):
    policy, ref, ids, completion, _ = random_batch(seed=3)
    inputs = inputs_from_logits(policy, ref, ids, completion)
    smoothing = 0.1 if shape == "robust" else 0.0
    objective = PairwiseObjective(shape, divergence, beta=0.2, alpha=0.4, label_smoothing=smoothing,
                                  ld_alpha=ld_alpha, wpo=wpo)
    output = objective(inputs)
    n, a = len(output.losses), 1.0 if ld_alpha is None else ld_alpha
    lengths = inputs.chosen_lengths, inputs.rejected_lengths
    sums = []
    for token_logps in (inputs.policy_chosen_token_logps, inputs.policy_rejected_token_logps,
                        inputs.ref_chosen_token_logps, inputs.ref_rejected_token_logps):
        sums.append(torch.tensor([naive_ld(token_logps[i].tolist(), int(min(lengths[0][i], lengths[1][i])), a)
                                  for i in range(n)], dtype=torch.float64))
    want, _, _ = pairwise_loss(*sums, *lengths, shape=shape, divergence=divergence, beta=0.2, alpha=0.4,
                               label_smoothing=smoothing)
    if wpo:
        want = want * torch.tensor([naive_wpo_weight(policy[i], ids[i], completion[i])
                                    * naive_wpo_weight(policy[n + i], ids[n + i], completion[n + i]) for i in range(n)],
                                   dtype=torch.float64)
    torch.testing.assert_close(output.losses, want, rtol=1e-10, atol=1e-12)


def test_wpo_weight_carries_no_gradient():
    policy, ref, ids, completion, _ = random_batch(seed=4)
    policy.requires_grad_(True)
    inputs = inputs_from_logits(policy, ref, ids, completion)
    inputs.chosen_log_collision = inputs.chosen_log_collision + 0 * policy.sum()  # a stray graph must be cut
    output = PairwiseObjective(wpo=True)(inputs)
    assert not output.metrics["wpo/weight"].requires_grad
    assert output.losses.requires_grad


def test_needs_and_refusals():
    assert PairwiseObjective().needs == {"reference_logps"}
    assert PairwiseObjective(ld_alpha=0.5).needs == {"reference_logps", "token_logps"}
    assert PairwiseObjective(wpo=True).needs == {"reference_logps", "log_collision"}
    mixture = Mixture([PairwiseObjective(ld_alpha=0.5), PairwiseObjective("bco_pair", wpo=True)], [1.0, 1.0])
    assert mixture.needs == {"reference_logps", "token_logps", "log_collision"}
    with pytest.raises(ValueError, match=r"ld_alpha must lie in \[0, 1\]"):
        PairwiseObjective(ld_alpha=1.5)
    with pytest.raises(ValueError, match="sorts over the batch"):
        PairwiseObjective("aot", wpo=True)
    with pytest.raises(ValueError, match="missing inputs"):
        PairwiseObjective(ld_alpha=0.5)(PreferenceInputs(*torch.zeros(6, 2)))


def tiny_llama(seed: int, vocab: int = 11) -> LlamaForCausalLM:
    """A real one-layer Llama over the random batch's vocabulary."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=0)
    return LlamaForCausalLM(config).float()


TRL_DIVERGENCE = {"reverse_kl": ("reverse_kl", 0.5), "js": ("js_divergence", 0.5), "forward_kl": ("forward_kl", 0.5),
                  "alpha": ("alpha_divergence", 1 - 0.4)}  # TRL's coefficient c is lit-align's 1 − α


TRL_CASES = [
    ("sigmoid", "reverse_kl", 0.5, True),
    ("ipo", "reverse_kl", 0.3, True),
    ("ipo", "alpha", 0.6, True),
    ("sigmoid_norm", "reverse_kl", 0.0, False),
    ("sigmoid_norm", "js", 0.2, True),
    ("hinge", "forward_kl", None, True),
    ("robust", "reverse_kl", 1.0, True),
    ("apo_zero", "reverse_kl", 0.7, False),
    ("discopop", "js", 0.5, True),
]
"""Shapes and divergences with each option on and off; the length-normalised shapes (``ipo``, ``sigmoid_norm``) under
shifted divergences too, as TRL 1.16 shifts every divergence's score to zero at ``r = 0`` as lit-align does."""


@pytest.mark.parametrize(("shape", "divergence", "ld_alpha", "wpo"), TRL_CASES)
def test_equals_trl(shape, divergence, ld_alpha, wpo):
    """TRL 1.16's ``DPOTrainer._compute_loss`` on two real tiny Llamas, through its own fused LM head (whose
    ``log_sum_sq_probs`` feed its WPO weights), against lit-align's objective on the same models' logits."""
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    from trl.trainer.utils import add_fused_lm_head

    _, _, ids, completion, attention = random_batch(seed=5)
    policy, ref = tiny_llama(seed=1).train(), tiny_llama(seed=2).eval()
    with torch.no_grad():
        logits = [model(input_ids=ids, attention_mask=attention).logits for model in (policy, ref)]
    inputs = inputs_from_logits(*logits, ids, completion)
    add_fused_lm_head(policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs"))
    add_fused_lm_head(ref)
    smoothing = 0.1 if shape == "robust" else 0.0
    trl_divergence, coef = TRL_DIVERGENCE[divergence]
    trainer = SimpleNamespace(
        model=policy, ref_model=ref, accelerator=SimpleNamespace(device="cpu", gather=lambda x: x,
                                                                 gather_for_metrics=lambda x: x),
        aux_loss_enabled=False, ld_alpha=ld_alpha, precompute_ref_logps=False, f_divergence_type=trl_divergence,
        f_alpha_divergence_coef=coef, loss_types=[shape], loss_weights=[1.0], beta=0.2, label_smoothing=smoothing,
        use_weighting=wpo, args=SimpleNamespace(gradient_checkpointing_kwargs=None, discopop_tau=0.05),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )
    batch = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}
    trl_loss = dpo_trainer.DPOTrainer._compute_loss(trainer, policy, batch, False)
    ours = PairwiseObjective(shape, divergence, beta=0.2, alpha=0.4, label_smoothing=smoothing, ld_alpha=ld_alpha,
                             wpo=wpo)(inputs)
    assert ours.loss.item() == pytest.approx(trl_loss.item(), rel=1e-5, abs=1e-6)
    if divergence == "reverse_kl":  # TRL logs β r under every divergence, lit-align β s (docs/objectives.md)
        rewards = trainer._metrics["train"]["rewards/chosen"][0]  # LD-DPO's log-ratios, as lit-align's
        assert ours.chosen_rewards.mean().item() == pytest.approx(rewards, rel=1e-5, abs=1e-6)
