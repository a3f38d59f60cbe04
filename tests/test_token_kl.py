"""Chunked sequential KL and log-probs (lit_align.models.token_kl) against a float64 loop oracle."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_align.models.logprobs import sequence_logps
from lit_align.models.token_kl import sequence_logps_and_kl

BATCH, TIME, HIDDEN, VOCAB = 3, 7, 5, 11
ZERO_PROB_TOKENS = [1, 4, 9]


def _log_softmax_loop(logits: torch.Tensor) -> list[torch.Tensor]:
    """Log-softmax by explicit loops over the vocabulary, max-shifted."""
    top = max(logits[v] for v in range(len(logits)))
    total = sum(torch.exp(logits[v] - top) for v in range(len(logits)))
    return [logits[v] - top - torch.log(total) for v in range(len(logits))]


def naive(hidden, head, ref_hidden, ref_head, input_ids, response_mask):
    """Σ_t over positions t predicting a response token t+1 of log π(y_t+1), log π_ref(y_t+1) and
    Σ_v π_ref(v) (log π_ref(v) - log π(v)), with 0 · log 0 = 0; float64, explicit loops."""
    policy, ref, kl = [], [], []
    for b in range(input_ids.shape[0]):
        row = [hidden.new_zeros((), dtype=torch.float64) for _ in range(3)]
        for t in range(input_ids.shape[1] - 1):
            if not response_mask[b, t + 1]:
                continue
            logp = _log_softmax_loop(head(hidden[b, t]).double())
            with torch.no_grad():
                ref_logp = _log_softmax_loop(ref_head(ref_hidden[b, t]).double())
            target = int(input_ids[b, t + 1])
            row[0] = row[0] + logp[target]
            row[1] = row[1] + ref_logp[target]
            for v in range(len(logp)):
                ref_p = math.exp(ref_logp[v].item())
                if ref_p > 0:
                    row[2] = row[2] + ref_p * (ref_logp[v] - logp[v])
        for column, value in zip((policy, ref, kl), row, strict=True):
            column.append(value)
    return torch.stack(policy), torch.stack(ref), torch.stack(kl)


def make_case(dtype=torch.float64, seed=0, zero_ref_probs=False):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(HIDDEN, VOCAB).to(dtype)
    ref_head = nn.Linear(HIDDEN, VOCAB).to(dtype)
    if zero_ref_probs:
        with torch.no_grad():
            ref_head.bias[ZERO_PROB_TOKENS] = -math.inf
            head.bias[ZERO_PROB_TOKENS[0]] = -math.inf  # masked in both models: 0 · (-inf - -inf) must be 0
    allowed = torch.tensor([v for v in range(VOCAB) if v not in ZERO_PROB_TOKENS])
    input_ids = allowed[torch.randint(len(allowed), (BATCH, TIME), generator=generator)]
    response_mask = torch.zeros(BATCH, TIME, dtype=torch.bool)
    response_mask[0, 3:] = True  # prompt 3, response 4
    response_mask[1, 2:5] = True  # response then right padding
    response_mask[2, 1:] = True
    hidden = (2 * torch.randn(BATCH, TIME, HIDDEN, generator=generator, dtype=dtype)).requires_grad_()
    ref_hidden = 2 * torch.randn(BATCH, TIME, HIDDEN, generator=generator, dtype=dtype)
    return hidden, head, ref_hidden, ref_head, input_ids, response_mask


def grads(outputs, hidden, head):
    """Gradients of a fixed random combination of policy log-probs and SeqKL w.r.t. policy parameters."""
    policy_logps, seq_kl = outputs
    weights = torch.linspace(-1.0, 2.0, 2 * len(seq_kl), dtype=seq_kl.dtype)
    loss = (weights[: len(seq_kl)] * policy_logps).sum() + (weights[len(seq_kl) :] * seq_kl).sum()
    return torch.autograd.grad(loss, [hidden, head.weight, head.bias])


@pytest.mark.parametrize("zero_ref_probs", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_matches_naive_values_and_gradients(chunk_size, zero_ref_probs):
    hidden, head, ref_hidden, ref_head, input_ids, response_mask = make_case(zero_ref_probs=zero_ref_probs)
    n_positions = int(response_mask[:, 1:].sum())
    assert chunk_size < n_positions or chunk_size == 1000
    got = sequence_logps_and_kl(hidden, head, ref_hidden, ref_head, input_ids, response_mask, chunk_size)
    want = naive(hidden, head, ref_hidden, ref_head, input_ids, response_mask)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w.detach(), rtol=1e-10, atol=1e-10)
    assert (got.seq_kl > 0).all()
    got_grads = grads((got.policy_logps, got.seq_kl), hidden, head)
    want_grads = grads((want[0], want[2]), hidden, head)
    for g, w in zip(got_grads, want_grads, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_zero_reference_probabilities_stay_finite_where_softmax_log_fails():
    hidden, head, ref_hidden, ref_head, input_ids, response_mask = make_case(zero_ref_probs=True)
    got = sequence_logps_and_kl(hidden, head, ref_hidden, ref_head, input_ids, response_mask, chunk_size=2)
    assert all(torch.isfinite(value).all() for value in got)
    (hidden_grad,) = torch.autograd.grad(got.seq_kl.sum(), hidden)
    assert torch.isfinite(hidden_grad).all()
    # the authors' formula (softmax, then log) is NaN here: this case exercises the 0 · log 0 branch
    ref_p = torch.softmax(ref_head(ref_hidden), -1)
    authors_kl = (ref_p * (ref_p.log() - torch.log_softmax(head(hidden), -1))).sum(-1)
    assert torch.isnan(authors_kl).all()


def test_log_probs_equal_sequence_logps_in_float32():
    hidden, head, ref_hidden, ref_head, input_ids, response_mask = make_case(dtype=torch.float32, seed=1)
    got = sequence_logps_and_kl(hidden, head, ref_hidden, ref_head, input_ids, response_mask, chunk_size=3)
    assert got.policy_logps.dtype == torch.float32
    torch.testing.assert_close(got.policy_logps, sequence_logps(hidden, head, input_ids, response_mask))
    torch.testing.assert_close(got.ref_logps, sequence_logps(ref_hidden, ref_head, input_ids, response_mask))


def test_bfloat16_heads_compute_in_float32():
    hidden, head, ref_hidden, ref_head, input_ids, response_mask = make_case(dtype=torch.bfloat16, seed=2)
    got = sequence_logps_and_kl(hidden, head, ref_hidden, ref_head, input_ids, response_mask, chunk_size=2)
    assert all(value.dtype == torch.float32 for value in got)
    want = naive(hidden, head, ref_hidden, ref_head, input_ids, response_mask)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w.detach(), rtol=1e-5, atol=1e-5)
    (hidden_grad,) = torch.autograd.grad(got.seq_kl.sum() + got.policy_logps.sum(), hidden)
    assert hidden_grad.dtype == torch.bfloat16 and torch.isfinite(hidden_grad).all()


def test_identical_models_have_zero_kl_and_zero_kl_gradient():
    hidden, head, _, _, input_ids, response_mask = make_case()
    got = sequence_logps_and_kl(hidden, head, hidden, head, input_ids, response_mask, chunk_size=2)
    torch.testing.assert_close(got.seq_kl, torch.zeros(BATCH, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(got.policy_logps, got.ref_logps)
    (hidden_grad,) = torch.autograd.grad(got.seq_kl.sum(), hidden)
    torch.testing.assert_close(hidden_grad, torch.zeros_like(hidden_grad), rtol=0, atol=1e-12)


@pytest.mark.parametrize("chunk_size", [2, 1000])
def test_reference_receives_no_gradient(chunk_size):
    hidden, head, ref_hidden, ref_head, input_ids, response_mask = make_case()
    ref_hidden.requires_grad_()
    got = sequence_logps_and_kl(hidden, head, ref_hidden, ref_head, input_ids, response_mask, chunk_size)
    assert not got.ref_logps.requires_grad
    (got.policy_logps.sum() + got.seq_kl.sum()).backward()
    assert ref_hidden.grad is None and ref_head.weight.grad is None
    assert head.weight.grad is not None


def test_no_grad_mode_gives_the_same_values():
    hidden, head, ref_hidden, ref_head, input_ids, response_mask = make_case()
    with_grad = sequence_logps_and_kl(
        hidden, head, ref_hidden, ref_head, input_ids, response_mask, chunk_size=2
    )
    with torch.no_grad():
        without = sequence_logps_and_kl(
            hidden, head, ref_hidden, ref_head, input_ids, response_mask, chunk_size=2
        )
    for g, w in zip(with_grad, without, strict=True):
        torch.testing.assert_close(g.detach(), w, rtol=0, atol=0)


def test_chunks_keep_no_vocabulary_sized_tensor_for_backward():
    """With chunking, the graph keeps only chunk inputs (recomputed in backward), no (n, vocab) tensor."""
    hidden, head, ref_hidden, ref_head, input_ids, response_mask = make_case()

    def saved_vocab_sized(chunk_size: int) -> int:
        shapes = []

        def pack(tensor):
            shapes.append(tensor.shape)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            sequence_logps_and_kl(hidden, head, ref_hidden, ref_head, input_ids, response_mask, chunk_size)
        return sum(1 for shape in shapes if shape and shape[-1] == VOCAB)

    assert saved_vocab_sized(1000) >= 2  # one chunk: policy logits and reference probabilities are kept
    assert saved_vocab_sized(2) == 0


def test_rejects_non_positive_chunk_size():
    hidden, head, ref_hidden, ref_head, input_ids, response_mask = make_case()
    with pytest.raises(ValueError, match="chunk_size"):
        sequence_logps_and_kl(hidden, head, ref_hidden, ref_head, input_ids, response_mask, chunk_size=0)


def test_rows_without_response_tokens_give_zeros():
    hidden, head, ref_hidden, ref_head, input_ids, response_mask = make_case()
    response_mask[1] = False
    got = sequence_logps_and_kl(hidden, head, ref_hidden, ref_head, input_ids, response_mask, chunk_size=2)
    assert all(value[1] == 0 for value in got)
    with torch.no_grad():
        empty = sequence_logps_and_kl(hidden, head, ref_hidden, ref_head, input_ids, response_mask & False)
    assert all(value.shape == (BATCH,) and (value == 0).all() for value in empty)
