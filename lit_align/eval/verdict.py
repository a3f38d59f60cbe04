"""One rule for every claim a table states: a two-sided 95% t-interval of the effect, paired by seed where the arms
share seeds, Welch's otherwise.

For a claim "``a`` exceeds ``b``" with values per seed (a run's end metric, one per seed and arm):

- **paired** (both arms ran the same seeds: the same data order and evaluation), ``d_i = a_i − b_i``::

      effect = d̄,   se = s_d / √n,   df = n − 1                                          (paired t)

- **Welch** (other seeds, or a different number of them)::

      effect = ā − b̄,   se = √(s_a²/n_a + s_b²/n_b),
      df = se⁴ / ((s_a²/n_a)² / (n_a − 1) + (s_b²/n_b)² / (n_b − 1))                     (Welch–Satterthwaite)

- **one sample** (a per-seed quantity against 0, e.g. a run's reward above a frontier): as paired, ``d_i = x_i``.

With ``t = effect / se`` and ``c = t_{1−(1−level)/2}(df)`` (Student's t quantile, non-integer ``df`` allowed), the
interval is ``effect ± c·se`` and the verdict is ``holds`` when it lies above 0 (``t > c``), ``reversed`` when it
lies below 0 (``t < −c``) and ``not shown`` otherwise. A ``not shown`` comparison says how many seeds per arm would
be needed at the observed effect and spread: ``n_pass``, the smallest ``n`` with ``|effect| / se(n) > c(df(n))``
(the effect would just pass: about 50% power), and ``n_power80``, the smallest with
``|effect| / se(n) ≥ c(df(n)) + t_{0.8}(df(n))`` (about 80% power, the usual normal-shift approximation).

The t distribution's CDF is ``1 − ½ I_{df/(df+t²)}(df/2, ½)`` with ``I`` the regularised incomplete beta function,
evaluated by its continued fraction (Lentz's method); the quantile is found by bisection. Pure Python (no scipy at
run time); ``tests/test_verdict.py`` checks both against ``scipy.stats``.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Outcome = Literal["holds", "not shown", "reversed"]
Test = Literal["paired", "welch", "one-sample"]
MAX_N = 10_000
"""``n_pass`` and ``n_power80`` are searched up to this many seeds per arm (``None`` beyond, or for no effect)."""


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of ``I_x(a, b)`` (modified Lentz), converging for ``x < (a + 1) / (a + b + 2)``."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    value = d
    for m in range(1, 10_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            value *= c * d
        if abs(c * d - 1.0) < 1e-15:
            return value
    raise ArithmeticError(f"the incomplete beta fraction did not converge for a={a}, b={b}, x={x}")


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b) = B(x; a, b) / B(a, b)``, ``a, b > 0``, ``0 ≤ x ≤ 1``."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"incomplete_beta needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """``P(T > t)`` for Student's t with ``df > 0`` degrees of freedom: ``½ I_{df/(df+t²)}(df/2, ½)`` for t ≥ 0."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def t_quantile(p: float, df: float) -> float:
    """``t_p(df)``: the ``t`` with ``P(T ≤ t) = p``, ``0 < p < 1``, by bisection on :func:`t_sf`."""
    if not (0.0 < p < 1.0 and df > 0):
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    tail, low, high = 1.0 - p, 0.0, 1.0
    while t_sf(high, df) > tail:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if t_sf(middle, df) > tail else (low, middle)
        if high - low <= 1e-13 * max(1.0, high):
            break
    return 0.5 * (low + high)


@dataclass(frozen=True)
class Comparison:
    """One claim "``a`` exceeds ``b``" judged by the rule (module docstring)."""

    test: Test
    n: tuple[int, ...]
    """Pairs (paired), values (one sample) or ``(n_a, n_b)`` (Welch)."""
    effect: float
    se: float
    df: float
    t: float
    critical: float
    low: float
    high: float
    p: float
    """Two-sided p-value."""
    verdict: Outcome
    level: float = 0.95
    n_pass: int | None = None
    n_power80: int | None = None

    def text(self) -> str:
        """The numbers in one line: effect, interval, t against its critical value, and the seeds needed."""
        if not math.isfinite(self.df) or self.df <= 0:
            return f"Δ {self.effect:+.3f}; n {'+'.join(map(str, self.n))}: no spread over seeds, not judged"
        seeds = "+".join(map(str, self.n))
        line = (f"Δ {self.effect:+.3f}, {100 * self.level:.3g}% CI [{self.low:+.3f}, {self.high:+.3f}]; "
                f"t {self.t:.2f} vs {self.critical:.2f} ({self.test}, n {seeds}, df {self.df:.1f})")
        if self.verdict != "not shown":
            return line
        if self.n_pass is None:
            return line + "; no seed count shows it at this effect"
        unit = "seeds per arm" if self.test == "welch" else "seeds"
        return line + f"; ≈{self.n_pass} {unit} to pass at this effect ({self.n_power80 or f'>{MAX_N}'} for 80% power)"


def _needed(effect: float, spread2: float, df_of, critical_of) -> tuple[int | None, int | None]:
    """Smallest ``n`` per arm passing at this effect, and at about 80% power (``spread2``: ``n · se(n)²``). Both
    conditions only get easier as ``n`` grows, so each is found by doubling, then bisection."""
    if effect == 0 or not math.isfinite(effect):
        return None, None

    def t_at(n: int) -> float:
        return abs(effect) / math.sqrt(spread2 / n) if spread2 > 0 else math.inf

    def smallest(passes) -> int | None:
        if passes(2):
            return 2
        low, high = 2, 4
        while not passes(high):
            if high >= MAX_N:
                return None
            low, high = high, min(2 * high, MAX_N)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if passes(middle) else (middle, high)
        return high

    return (smallest(lambda n: t_at(n) > critical_of(df_of(n))),
            smallest(lambda n: t_at(n) >= critical_of(df_of(n)) + t_quantile(0.8, df_of(n))))


def _judge(test: Test, n: tuple[int, ...], effect: float, se: float, df: float, level: float,
           needed: tuple[int | None, int | None] = (None, None)) -> Comparison:
    if not df > 0:
        return Comparison(test, n, effect, math.inf, math.nan, 0.0, math.inf, -math.inf, math.inf, 1.0, "not shown",
                          level)
    critical = t_quantile(1.0 - (1.0 - level) / 2.0, df)
    t = effect / se if se > 0 else (math.copysign(math.inf, effect) if effect else 0.0)
    low, high = effect - critical * se, effect + critical * se
    verdict: Outcome = "holds" if t > critical else "reversed" if t < -critical else "not shown"
    p = min(1.0, 2.0 * t_sf(abs(t), df))
    return Comparison(test, n, effect, se, df, t, critical, low, high, p, verdict, level,
                      *(needed if verdict == "not shown" else (None, None)))


def one_sample_summary(mean: float, sd: float, n: int, level: float = 0.95) -> Comparison:
    """The mean of ``n`` per-seed values (or paired differences) with standard deviation ``sd`` against 0."""
    se = sd / math.sqrt(n) if n > 1 else math.inf
    critical_of = lambda df: t_quantile(1.0 - (1.0 - level) / 2.0, df)  # noqa: E731
    needed = _needed(mean, sd * sd, lambda k: k - 1, critical_of) if n > 1 else (None, None)
    return _judge("one-sample", (n,), mean, se, n - 1, level, needed)


def welch_summary(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int,
                  level: float = 0.95) -> Comparison:
    """Welch's test of ``a > b`` from each arm's mean, standard deviation over seeds and seed count."""
    if n_a < 2 or n_b < 2:
        return _judge("welch", (n_a, n_b), mean_a - mean_b, math.inf, 0, level)
    va, vb = sd_a * sd_a / n_a, sd_b * sd_b / n_b
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va * va / (n_a - 1) + vb * vb / (n_b - 1)) if va + vb > 0 else n_a + n_b - 2

    def df_of(k: int) -> float:  # Welch's df with k seeds in each arm and the observed spreads
        s4 = sd_a**4 + sd_b**4
        return (sd_a**2 + sd_b**2) ** 2 * (k - 1) / s4 if s4 > 0 else 2 * k - 2

    critical_of = lambda d: t_quantile(1.0 - (1.0 - level) / 2.0, d)  # noqa: E731
    needed = _needed(mean_a - mean_b, sd_a**2 + sd_b**2, df_of, critical_of)
    return _judge("welch", (n_a, n_b), mean_a - mean_b, se, df, level, needed)


def _sd(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else math.nan


def one_sample(values: Sequence[float], level: float = 0.95) -> Comparison:
    """Per-seed values against 0 (a claim "the quantity is positive")."""
    values = [float(v) for v in values]
    if not values:
        return _judge("one-sample", (0,), math.nan, math.inf, 0, level)
    return one_sample_summary(statistics.fmean(values), _sd(values), len(values), level)


def paired(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Comparison:
    """``a > b`` over the same seeds, ``a[i]`` and ``b[i]`` from seed ``i``."""
    if len(a) != len(b):
        raise ValueError(f"paired values need as many of a as of b, got {len(a)} and {len(b)}")
    gaps = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    return dataclasses.replace(one_sample(gaps, level), test="paired")


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Comparison:
    """``a > b`` over different seeds (Welch's unequal-variance t)."""
    a, b = [float(x) for x in a], [float(x) for x in b]
    if not a or not b:
        return _judge("welch", (len(a), len(b)), math.nan, math.inf, 0, level)
    return welch_summary(statistics.fmean(a), _sd(a), len(a), statistics.fmean(b), _sd(b), len(b), level)


def compare(a: Mapping[int, float], b: Mapping[int, float], level: float = 0.95) -> Comparison:
    """``a > b`` from each arm's value per seed: paired when both ran the same seeds, Welch otherwise."""
    if set(a) == set(b) and len(a) > 1:
        seeds = sorted(a)
        return paired([a[s] for s in seeds], [b[s] for s in seeds], level)
    return welch(list(a.values()), list(b.values()), level)


def combine(parts: Sequence[Comparison]) -> Outcome:
    """A claim made of several comparisons (each β, each step of an ordering): ``holds`` when every part holds,
    ``reversed`` when some part is reversed and none holds, ``not shown`` otherwise (none, or mixed)."""
    verdicts = {part.verdict for part in parts}
    if verdicts == {"holds"}:
        return "holds"
    return "reversed" if "reversed" in verdicts and "holds" not in verdicts else "not shown"
