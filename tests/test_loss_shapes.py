"""Loss shapes of PairwiseObjective against naive float64 loops written from each paper's equation (in
TRL 1.16's form), hand-worked values, finite gradients, and the configuration-time refusals."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import pytest
import torch
import yaml
from jsonargparse import ArgumentError, ArgumentParser

from lit_align.objectives import Objective, PairwiseObjective, PreferenceInputs
from lit_align.objectives.functional import pairwise_loss
from lit_align.objectives.shapes import LOSS_SHAPES, ShapeName

SHAPES = list(ShapeName.__args__)
F_SHAPES = [s for s in SHAPES if LOSS_SHAPES[s].f_divergence]
REVERSE_KL_ONLY = [s for s in SHAPES if not LOSS_SHAPES[s].f_divergence]
DIVERGENCES = ["reverse_kl", "forward_kl", "js", "alpha"]
SMOOTHING = {"conservative": 0.1, "robust": 0.2, "exo_pair": 1e-3, "aot": 0.05, "aot_unpaired": 0.1}


# ---- the naive oracle: plain Python floats, one pair at a time -----------------------------------------


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return math.exp(log_sigmoid(x))


def naive_f_prime(r: float, divergence: str, alpha: float) -> float:
    """f'(u) at u = e^r with f'(1) = 0 (f-DPO, Table 1; TRL 1.16's constants)."""
    u = math.exp(r)
    return {
        "reverse_kl": math.log(u),
        "forward_kl": 1 - 1 / u,
        "js": math.log(2 * u / (1 + u)),
        "alpha": (1 - u ** (-alpha)) / alpha,
    }[divergence]


def naive_losses(shape, pc, pr, rc, rr, lc, lr, *, divergence, beta, alpha, eps, tau) -> list[float]:
    n = len(pc)
    sw = [naive_f_prime(pc[i] - rc[i], divergence, alpha) for i in range(n)]
    sl = [naive_f_prime(pr[i] - rr[i], divergence, alpha) for i in range(n)]
    if shape in ("aot", "aot_unpaired"):
        if shape == "aot":
            first = sorted(pc[i] - pr[i] for i in range(n))
            second = sorted(rc[i] - rr[i] for i in range(n))
        else:
            first, second = sorted(sw), sorted(sl)
        return [
            -(1 - eps) * log_sigmoid(beta * (a - b)) - eps * log_sigmoid(-beta * (a - b))
            for a, b in zip(first, second, strict=True)
        ]
    out = []
    for i in range(n):
        d = sw[i] - sl[i]
        z = beta * d
        norm = sw[i] / lc[i] - sl[i] / lr[i]
        if shape == "sigmoid":
            loss = -log_sigmoid(z)
        elif shape == "conservative":
            loss = -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)
        elif shape == "robust":
            loss = ((1 - eps) * -log_sigmoid(z) - eps * -log_sigmoid(-z)) / (1 - 2 * eps)
        elif shape == "hinge":
            loss = max(0.0, 1 - z)
        elif shape == "ipo":
            loss = (norm - 1 / (2 * beta)) ** 2
        elif shape == "exo_pair":
            q_w, q_l = sigmoid(z), sigmoid(-z)
            loss = q_w * math.log(q_w / (1 - eps)) + q_l * math.log(q_l / eps)
        elif shape == "nca_pair":
            a, b = beta * sw[i], beta * sl[i]
            loss = -log_sigmoid(a) - 0.5 * log_sigmoid(-a) - 0.5 * log_sigmoid(-b)
        elif shape == "bco_pair":
            loss = -log_sigmoid(beta * sw[i]) - log_sigmoid(-beta * sl[i])
        elif shape == "sppo_hard":
            loss = (sw[i] - 1 / (2 * beta)) ** 2 + (sl[i] + 1 / (2 * beta)) ** 2
        elif shape == "apo_zero":
            loss = (1 - sigmoid(beta * sw[i])) + sigmoid(beta * sl[i])
        elif shape == "apo_down":
            loss = sigmoid(beta * sw[i]) + (1 - sigmoid(beta * (sw[i] - sl[i])))
        elif shape == "discopop":
            m = sigmoid(z / tau)
            loss = (1 - m) * -log_sigmoid(z) + m * math.exp(-z)
        elif shape == "sigmoid_norm":
            loss = -log_sigmoid(beta * norm)
        else:
            raise AssertionError(shape)
        out.append(loss)
    return out


# ---- helpers -------------------------------------------------------------------------------------------


def random_batch(seed: int, n: int = 16, spread: float = 1.5):
    rng = random.Random(seed)
    pc = [-rng.uniform(5, 60) for _ in range(n)]
    pr = [-rng.uniform(5, 60) for _ in range(n)]
    rc = [p + rng.gauss(0, spread) for p in pc]
    rr = [p + rng.gauss(0, spread) for p in pr]
    lc = [float(rng.randint(1, 40)) for _ in range(n)]
    lr = [float(rng.randint(1, 40)) for _ in range(n)]
    return pc, pr, rc, rr, lc, lr


def tensors(*lists, dtype=torch.float64):
    return [torch.tensor(values, dtype=dtype) for values in lists]


def inputs_of(pc, pr, rc, rr, lc, lr) -> PreferenceInputs:
    return PreferenceInputs(
        policy_chosen_logps=pc,
        policy_rejected_logps=pr,
        chosen_lengths=lc,
        rejected_lengths=lr,
        ref_chosen_logps=rc,
        ref_rejected_logps=rr,
    )


def objective(shape: str, divergence: str = "reverse_kl", **kwargs) -> PairwiseObjective:
    kwargs.setdefault("label_smoothing", SMOOTHING.get(shape, 0.0))
    return PairwiseObjective(shape=shape, divergence=divergence, **kwargs)


def cases():
    for shape in SHAPES:
        for divergence in DIVERGENCES if shape in F_SHAPES else ["reverse_kl"]:
            yield shape, divergence


# ---- the catalogue -------------------------------------------------------------------------------------


def test_registry_matches_the_literal_and_every_shape_documents_equation_and_paper():
    assert set(LOSS_SHAPES) == set(SHAPES)
    assert set(F_SHAPES) == {
        "sigmoid",
        "conservative",
        "robust",
        "hinge",
        "ipo",
        "exo_pair",
        "discopop",
        "sigmoid_norm",
    }
    for name, spec in LOSS_SHAPES.items():
        doc = " ".join((spec.loss.__doc__ or "").split())
        assert re.search(r"``[^`]*=[^`]*β[^`]*``", doc), f"{name}: no inline equation in β"
        assert re.search(r"\(\w[\w ]*(et al\.)?[^()]*\d{4}", doc), f"{name}: no paper (author, year) cited"
        assert re.search(r"https://\S+\.\S+", doc), f"{name}: no link to the paper"


@pytest.mark.parametrize("shape,divergence", list(cases()))
def test_shape_matches_naive_float64_loop(shape, divergence):
    beta, alpha, tau = 0.3, 0.4, 0.05
    for seed in range(3):
        batch = random_batch(seed)
        obj = objective(shape, divergence, beta=beta, alpha=alpha, discopop_tau=tau)
        out = obj(inputs_of(*tensors(*batch)))
        expected = naive_losses(
            shape, *batch, divergence=divergence, beta=beta, alpha=alpha, eps=obj.label_smoothing, tau=tau
        )
        torch.testing.assert_close(
            out.losses, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12
        )
        pc, pr, rc, rr, _, _ = batch
        chosen = [beta * naive_f_prime(pc[i] - rc[i], divergence, alpha) for i in range(len(pc))]
        rejected = [beta * naive_f_prime(pr[i] - rr[i], divergence, alpha) for i in range(len(pc))]
        torch.testing.assert_close(out.chosen_rewards, torch.tensor(chosen, dtype=torch.float64))
        torch.testing.assert_close(out.rejected_rewards, torch.tensor(rejected, dtype=torch.float64))


@pytest.mark.parametrize(
    "shape,kwargs,logratios,lengths,expected",
    [
        # policy == reference: DPO's ln 2, whatever the divergence (every score is 0 there)
        ("sigmoid", {}, (0.0, 0.0), (3.0, 5.0), math.log(2)),
        ("sigmoid", {"divergence": "forward_kl"}, (0.0, 0.0), (3.0, 5.0), math.log(2)),
        ("ipo", {"divergence": "forward_kl", "beta": 0.5}, (0.0, 0.0), (3.0, 5.0), 1.0),
        ("robust", {"label_smoothing": 0.1}, (0.0, 0.0), (1.0, 1.0), math.log(2)),
        ("discopop", {}, (0.0, 0.0), (1.0, 1.0), 0.5 * math.log(2) + 0.5),
        ("apo_zero", {}, (0.0, 0.0), (1.0, 1.0), 1.0),
        (
            "exo_pair",
            {"label_smoothing": 1e-3},
            (0.0, 0.0),
            (1.0, 1.0),
            math.log(0.5) - 0.5 * math.log(0.999e-3),
        ),
        # r_w = 2, r_l = -1, β = 0.1: 1 - 0.3
        ("hinge", {}, (2.0, -1.0), (1.0, 1.0), 0.7),
        # 2/4 - (-2)/2 = 1.5; 1/(2β) = 1; (1.5 - 1)^2
        ("ipo", {"beta": 0.5}, (2.0, -2.0), (4.0, 2.0), 0.25),
        # r_w = 1/(2β), r_l = -1/(2β): both squares vanish
        ("sppo_hard", {"beta": 0.5}, (1.0, -1.0), (1.0, 1.0), 0.0),
        # -log σ(0.1 · 3) - ½ log σ(-0.1 · 3)... with r_w = 3, r_l = 0
        (
            "nca_pair",
            {},
            (3.0, 0.0),
            (1.0, 1.0),
            -log_sigmoid(0.3) - 0.5 * log_sigmoid(-0.3) + 0.5 * math.log(2),
        ),
    ],
)
def test_hand_worked_values(shape, kwargs, logratios, lengths, expected):
    rc, rr = torch.tensor([-10.0]), torch.tensor([-20.0])
    pc, pr = rc + logratios[0], rr + logratios[1]
    losses, _, _ = pairwise_loss(
        pc, pr, rc, rr, torch.tensor([lengths[0]]), torch.tensor([lengths[1]]), shape=shape, **kwargs
    )
    assert losses.item() == pytest.approx(expected, abs=1e-6)


def test_aot_compares_sorted_margins_not_pairs():
    # policy margins (3, 1), reference margins (0, 2): sorted (1, 3) - (0, 2) = (1, 1);
    # pair by pair it would be (3, -1)
    pc, pr = torch.tensor([3.0, 1.0]), torch.zeros(2)
    rc, rr = torch.tensor([0.0, 2.0]), torch.zeros(2)
    ones = torch.ones(2)
    losses, _, _ = pairwise_loss(pc, pr, rc, rr, ones, ones, shape="aot", beta=1.0)
    torch.testing.assert_close(losses, torch.full((2,), -log_sigmoid(1.0)))
    # unpaired: chosen log-ratios (3, -1), rejected (0, 0) -> sorted (-1, 3) - (0, 0)
    losses, _, _ = pairwise_loss(pc, pr, rc, rr, ones, ones, shape="aot_unpaired", beta=1.0)
    torch.testing.assert_close(losses, torch.tensor([-log_sigmoid(-1.0), -log_sigmoid(3.0)]))


@pytest.mark.parametrize("shape,divergence", list(cases()))
def test_gradients_finite_and_rewards_detached(shape, divergence):
    pc, pr, rc, rr, lc, lr = tensors(*random_batch(7), dtype=torch.float32)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    out = objective(shape, divergence)(inputs_of(pc, pr, rc, rr, lc, lr))
    out.loss.backward()
    assert torch.isfinite(out.losses).all()
    assert torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


@pytest.mark.parametrize("shape,divergence", list(cases()))
def test_gradients_match_finite_differences_of_the_naive_loss(shape, divergence):
    """d(Σ L)/d log π_θ(y_w|x) and d/d log π_θ(y_l|x) against central differences of the float64 naive loop."""
    batch = random_batch(7, n=6)
    obj = objective(shape, divergence, beta=0.3, alpha=0.4)
    pc, pr, rc, rr, lc, lr = tensors(*batch)
    pc.requires_grad_(True)
    pr.requires_grad_(True)
    obj(inputs_of(pc, pr, rc, rr, lc, lr)).losses.sum().backward()
    options = dict(divergence=divergence, beta=0.3, alpha=0.4, eps=obj.label_smoothing, tau=obj.discopop_tau)
    step = 1e-6
    for index, grad in ((0, pc.grad), (1, pr.grad)):
        numeric = []
        for i in range(len(batch[index])):
            up, down = [list(x) for x in batch], [list(x) for x in batch]
            up[index][i] += step
            down[index][i] -= step
            difference = sum(naive_losses(shape, *up, **options)) - sum(naive_losses(shape, *down, **options))
            numeric.append(difference / (2 * step))
        torch.testing.assert_close(grad, torch.tensor(numeric, dtype=torch.float64), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_extreme_log_ratios_stay_finite(shape):
    """Log-ratios of ±1000 in float32 (reverse KL); DiscoPOP is where TRL's ``σ(z/τ)·e^{-z}`` gives 0·∞."""
    pc = torch.tensor([1000.0, -1000.0, 1000.0, -1000.0], requires_grad=True)
    pr = torch.tensor([-1000.0, 1000.0, 1000.0, -1000.0], requires_grad=True)
    zeros, ones = torch.zeros(4), torch.ones(4)
    out = objective(shape)(inputs_of(pc, pr, zeros, zeros, ones, ones))
    out.loss.backward()
    assert (
        torch.isfinite(out.losses).all() and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    )


@pytest.mark.parametrize("shape", ["sigmoid", "robust", "conservative", "hinge", "exo_pair", "discopop"])
@pytest.mark.parametrize("divergence", ["forward_kl", "js", "alpha"])
def test_margin_shapes_stay_finite_under_every_divergence_at_extreme_log_ratios(shape, divergence):
    pc = torch.tensor([200.0, -200.0], requires_grad=True)
    pr = torch.tensor([-200.0, 200.0], requires_grad=True)
    zeros, ones = torch.zeros(2), torch.ones(2)
    out = objective(shape, divergence)(inputs_of(pc, pr, zeros, zeros, ones, ones))
    out.loss.backward()
    assert (
        torch.isfinite(out.losses).all() and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    )


# ---- refusals at configuration time --------------------------------------------------------------------


@pytest.mark.parametrize("shape", REVERSE_KL_ONLY)
@pytest.mark.parametrize("divergence", ["forward_kl", "js", "alpha"])
def test_shapes_without_f_divergence_generalisation_refuse_other_divergences(shape, divergence):
    with pytest.raises(ValueError, match=rf"{shape}.*no f-divergence generalisation.*{divergence}"):
        objective(shape, divergence)
    ones = torch.ones(2)
    with pytest.raises(ValueError, match="no f-divergence generalisation"):
        pairwise_loss(ones, ones, ones, ones, ones, ones, shape=shape, divergence=divergence)


@pytest.mark.parametrize("shape", [s for s in SHAPES if LOSS_SHAPES[s].label_smoothing == "unused"])
def test_shapes_that_ignore_label_smoothing_refuse_it(shape):
    with pytest.raises(ValueError, match=rf"{shape}.*does not use label_smoothing.*conservative"):
        PairwiseObjective(shape=shape, label_smoothing=0.1)


def test_exo_needs_label_smoothing():
    with pytest.raises(ValueError, match="exo_pair.*needs label_smoothing > 0"):
        PairwiseObjective(shape="exo_pair")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"beta": 0.0}, "beta must be > 0"),
        ({"beta": -1.0}, "beta must be > 0"),
        ({"alpha": 0.0}, "alpha must lie in"),
        ({"alpha": 1.0}, "alpha must lie in"),
        ({"shape": "robust", "label_smoothing": 0.5}, "label_smoothing must lie in"),
        ({"shape": "robust", "label_smoothing": -0.1}, "label_smoothing must lie in"),
        ({"shape": "discopop", "discopop_tau": 0.0}, "discopop_tau must be > 0"),
        ({"shape": "dpo"}, "unknown loss shape 'dpo'"),
        ({"divergence": "kl"}, "unknown divergence 'kl'"),
    ],
)
def test_out_of_range_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PairwiseObjective(**kwargs)


def parse_objective(init_args: dict) -> Objective:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--objective", type=Objective)
    config = {"objective": {"class_path": "lit_align.objectives.PairwiseObjective", "init_args": init_args}}
    return parser.instantiate(parser.parse_object(config)).objective


def test_yaml_selects_a_shape():
    obj = parse_objective({"shape": "ipo", "divergence": "js", "beta": 0.5})
    assert isinstance(obj, PairwiseObjective) and (obj.shape, obj.divergence, obj.beta) == ("ipo", "js", 0.5)


@pytest.mark.parametrize(
    "init_args,message",
    [
        ({"shape": "sigmod"}, r'key "shape".*Literal\[.sigmoid., .conservative.'),
        ({"shape": "robust", "label_smoothing": 0.7}, 'key "label_smoothing".*LabelSmoothing'),
        ({"beta": 0}, 'key "beta".*PositiveFloat'),
        ({"alpha": 1.5}, 'key "alpha".*OpenUnitInterval'),
    ],
)
def test_yaml_typos_and_out_of_range_values_fail_at_parse_time(init_args, message):
    with pytest.raises(ArgumentError, match=re.compile(message, re.DOTALL)):
        parse_objective(init_args)


def test_yaml_divergence_refusal_fails_at_instantiation():
    with pytest.raises(ValueError, match="apo_zero.*no f-divergence generalisation.*'js'"):
        parse_objective({"shape": "apo_zero", "divergence": "js"})


# ---- docs/objectives.md: every YAML snippet instantiates ---------------------------------------------------


def test_every_yaml_snippet_in_the_objective_docs_instantiates():
    text = (Path(__file__).resolve().parents[1] / "docs" / "objectives.md").read_text(encoding="utf-8")
    snippets = re.findall(r"`(\{class_path: [^`]*\})`", text)
    snippets += re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    assert len(snippets) >= 24
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--objective", type=Objective)
    for snippet in snippets:
        loaded = yaml.safe_load(snippet)
        config = loaded["model"] if "model" in loaded else {"objective": loaded}
        assert isinstance(parser.instantiate(parser.parse_object(config)).objective, Objective), snippet
    documented = set(re.findall(r"^\| `(\w+)` \|", text, flags=re.MULTILINE))
    assert set(SHAPES) <= documented
