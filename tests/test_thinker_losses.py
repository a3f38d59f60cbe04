"""Each LTA-Thinker loss against a float64 loop written from its equation."""

from __future__ import annotations

import math

import pytest
import torch

from lit_align.thinker.losses import (
    ThoughtLoss,
    ThoughtTerms,
    alignment_kl,
    answer_nll,
    focus_infonce,
    variance_kl,
)


def softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def cosine(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    return dot / math.sqrt(sum(a * a for a in u)) / math.sqrt(sum(b * b for b in v))


def test_alignment_kl_matches_the_equation():
    torch.manual_seed(0)
    anchor, thoughts = torch.randn(3, 7), torch.randn(3, 4, 7)
    for b, value in enumerate(alignment_kl(anchor, thoughts).tolist()):
        p = softmax(anchor[b].double().tolist())
        kls = []
        for j in range(4):
            q = softmax(thoughts[b, j].double().tolist())
            kls.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))
        assert value == pytest.approx(sum(kls) / 4, rel=1e-5, abs=1e-6)


def test_alignment_kl_is_zero_for_thoughts_equal_to_the_anchor_up_to_a_shift():
    anchor = torch.randn(2, 5)
    thoughts = anchor[:, None].expand(-1, 3, -1) + torch.tensor([0.0, 1.0, -2.0])[None, :, None]
    assert alignment_kl(anchor, thoughts).abs().max() < 1e-6


def test_focus_infonce_matches_the_equation():
    torch.manual_seed(1)
    anchor, steps, answer = torch.randn(3, 6), torch.randn(3, 4, 6), torch.randn(3, 6)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    losses, valid = focus_infonce(anchor, steps, mask, answer, temperature=0.1)
    assert valid.tolist() == [True, True, False]
    for b in range(2):
        js = [j for j in range(4) if mask[b, j]]
        positive = max(js, key=lambda j: cosine(steps[b, j].double().tolist(), answer[b].double().tolist()))
        logits = {j: cosine(anchor[b].double().tolist(), steps[b, j].double().tolist()) / 0.1 for j in js}
        expected = -logits[positive] + math.log(sum(math.exp(v) for v in logits.values()))
        assert losses[b].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert losses[2].item() == 0.0


def test_focus_without_steps_gives_finite_gradients():
    anchor = torch.randn(2, 4, requires_grad=True)
    steps = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    losses, _ = focus_infonce(anchor, steps, mask, torch.randn(2, 4))
    losses.sum().backward()
    assert torch.isfinite(anchor.grad).all() and torch.isfinite(steps.grad).all()
    assert anchor.grad[1].abs().max() == 0


def test_answer_nll_matches_a_loop():
    torch.manual_seed(2)
    logits = torch.randn(2, 5, 9)
    labels = torch.tensor([[-100, -100, 3, 4, 8], [-100, 1, 2, -100, -100]])
    total, count = answer_nll(logits, labels)
    for b in range(2):
        expected = 0.0
        for t in range(1, 5):
            if labels[b, t] != -100:
                row = logits[b, t - 1].double()
                expected -= (row[labels[b, t]] - torch.logsumexp(row, 0)).item()
        assert total[b].item() == pytest.approx(expected, rel=1e-5)
    assert count.tolist() == [3, 2]


def test_variance_kl_matches_the_gaussian_kl():
    logvar = torch.randn(2, 3, 4)
    for b, value in enumerate(variance_kl(logvar).tolist()):
        terms = [0.5 * (math.exp(v) - 1 - v) for v in logvar[b].double().flatten().tolist()]
        assert value == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert variance_kl(torch.zeros(1, 2, 2)).item() == 0.0


def test_thought_loss_weights_its_parts_and_skips_zero_weights():
    torch.manual_seed(3)
    terms = ThoughtTerms(
        logits=torch.randn(2, 5, 9), labels=torch.tensor([[-100, -100, 3, 4, 8]] * 2), anchor=torch.randn(2, 6),
        thoughts=torch.randn(2, 3, 6), steps=torch.randn(2, 4, 6), step_mask=torch.ones(2, 4, dtype=torch.bool),
        answer_embedding=torch.randn(2, 6), logvar=torch.randn(2, 3, 6),
    )
    output = ThoughtLoss(sft=0.5, focus=0.25, align=2.0, variance=0.1)(terms)
    expected = sum(w * output.parts[n] for n, w in {"sft": 0.5, "focus": 0.25, "align": 2.0, "variance": 0.1}.items())
    assert output.loss.item() == pytest.approx(expected.item())
    terms.steps = None  # not read when focus has weight 0
    assert set(ThoughtLoss(sft=1.0, focus=0.0, align=0.0)(terms).parts) == {"sft"}
    with pytest.raises(ValueError, match="≥ 0"):
        ThoughtLoss(sft=-1.0)
