"""The one statistical rule (lit_align/eval/verdict.py) against scipy: the incomplete beta, Student's t tail and
quantile, the paired / Welch / one-sample tests and their intervals, and the seeds needed at the observed effect.
The scipy cases skip cleanly where scipy is not installed (it is a test dependency only); the verdict logic itself
is checked on hand-worked cases that need no scipy."""

from __future__ import annotations

import math

import pytest

from lit_align.eval.verdict import (
    combine,
    compare,
    incomplete_beta,
    one_sample,
    one_sample_summary,
    paired,
    t_quantile,
    t_sf,
    welch,
    welch_summary,
)

SAMPLES = [
    ([0.606, 0.59, 0.62], [0.51, 0.56, 0.535]),
    ([4.52, 4.40, 4.66], [4.95, 5.20, 4.71]),
    ([1.0, 2.0, 3.5, 0.2], [0.5, 1.2, 2.0, 0.9]),
    ([0.367, 0.50, 0.23, 0.41, 0.12], [0.212, 0.30, 0.21, 0.05, 0.09]),
    ([10.0, 10.5], [9.0, 9.1]),
]


def test_incomplete_beta_and_t_distribution_match_scipy():
    special = pytest.importorskip("scipy.special")
    stats = pytest.importorskip("scipy.stats")
    for a in (0.5, 1.0, 1.35, 2.5, 15.0, 500.0):
        for b in (0.5, 1.0, 3.0, 40.0):
            for x in (1e-6, 0.01, 0.3, 0.5, 0.77, 0.999):
                assert incomplete_beta(a, b, x) == pytest.approx(float(special.betainc(a, b, x)), rel=1e-10,
                                                                 abs=1e-14)
    for df in (1.0, 1.6, 2.0, 2.7, 3.18, 4.0, 7.5, 30.0, 1e4):
        for t in (-6.0, -1.0, 0.0, 0.3, 2.0, 4.3, 40.0):
            assert t_sf(t, df) == pytest.approx(float(stats.t.sf(t, df)), rel=1e-9, abs=1e-15)
        for p in (0.2, 0.5, 0.8, 0.975, 0.995, 0.9999):
            assert t_quantile(p, df) == pytest.approx(float(stats.t.ppf(p, df)), rel=1e-9, abs=1e-12)
    assert t_quantile(0.975, 2) == pytest.approx(4.302652729749464, rel=1e-12)  # the table value for n = 3 pairs
    with pytest.raises(ValueError, match="0 < p < 1"):
        t_quantile(1.0, 3)


@pytest.mark.parametrize("a, b", SAMPLES)
def test_paired_welch_and_one_sample_match_scipy(a, b):
    stats = pytest.importorskip("scipy.stats")
    cases = [
        (paired(a, b), stats.ttest_rel(a, b)),
        (welch(a, b), stats.ttest_ind(a, b, equal_var=False)),
        (one_sample(a), stats.ttest_1samp(a, 0.0)),
    ]
    for ours, theirs in cases:
        assert ours.t == pytest.approx(float(theirs.statistic), rel=1e-10)
        assert ours.p == pytest.approx(float(theirs.pvalue), rel=1e-8)
        assert ours.df == pytest.approx(float(theirs.df), rel=1e-10)
        interval = theirs.confidence_interval(0.95)
        assert (ours.low, ours.high) == (pytest.approx(float(interval.low), rel=1e-9),
                                          pytest.approx(float(interval.high), rel=1e-9))
        expected = "holds" if interval.low > 0 else "reversed" if interval.high < 0 else "not shown"
        assert ours.verdict == expected


def test_seeds_needed_pass_exactly_there_and_give_about_80_percent_power():
    stats = pytest.importorskip("scipy.stats")
    for mean, sd in ((0.1, 1.0), (0.5, 1.0), (0.3, 0.2), (1.0, 3.0)):
        judged = one_sample_summary(mean, sd, 3)
        assert judged.verdict == "not shown" and judged.n_pass is not None
        assert one_sample_summary(mean, sd, judged.n_pass).verdict == "holds"
        assert one_sample_summary(mean, sd, judged.n_pass - 1).verdict == "not shown"
        n = judged.n_power80
        df, shift = n - 1, mean / (sd / math.sqrt(n))
        power = stats.nct.sf(stats.t.ppf(0.975, df), df, shift) + stats.nct.cdf(-stats.t.ppf(0.975, df), df, shift)
        assert 0.79 < power < 0.9
    welch_case = welch_summary(0.071, 0.016, 3, 0.0, 0.04, 3)
    assert welch_case.verdict == "not shown"
    assert welch_summary(0.071, 0.016, welch_case.n_pass, 0.0, 0.04, welch_case.n_pass).verdict == "holds"
    assert welch_summary(0.071, 0.016, welch_case.n_pass - 1, 0.0, 0.04, welch_case.n_pass - 1).verdict != "holds"


def test_twice_the_standard_error_is_not_95_percent_with_three_seeds():
    """|Δ| > 2·se called this "holds" (docs/hh_orderings.md, accuracy DPO > forward KL: 0.606±0.009 vs
    0.535±0.023); Welch's df is 2.6 and its 95% critical value 3.4, so at t 2.9 it is not shown."""
    judged = welch_summary(0.606, 0.009 * math.sqrt(3), 3, 0.535, 0.023 * math.sqrt(3), 3)
    assert judged.effect > 2 * judged.se
    assert 2.5 < judged.df < 2.8 and judged.critical > 3.2
    assert judged.verdict == "not shown" and judged.n_pass == 4
    assert "seeds per arm to pass" in judged.text()


def test_verdicts_dispatch_and_combination():
    up = compare({0: 1.0, 1: 1.1, 2: 1.2}, {0: 0.0, 1: 0.1, 2: 0.2})
    assert up.test == "paired" and up.verdict == "holds" and up.t == math.inf  # constant gap of +1
    down = compare({0: 0.0, 1: 0.3, 2: 0.1}, {0: 1.0, 1: 1.2, 2: 1.05})
    assert down.verdict == "reversed" and down.high < 0
    other_seeds = compare({0: 1.0, 1: 1.1, 2: 1.2}, {3: 0.0, 4: 0.1, 5: 0.2})
    assert other_seeds.test == "welch" and other_seeds.n == (3, 3) and other_seeds.verdict == "holds"
    # paired keeps what is shared: a seed effect that Welch's test counts as noise
    shared = {0: 0.1, 1: 0.5, 2: 0.9}, {0: 0.0, 1: 0.42, 2: 0.81}
    assert compare(*shared).verdict == "holds" and welch(list(shared[0].values()),
                                                         list(shared[1].values())).verdict == "not shown"
    assert compare({0: 1.0, 1: 2.0}, {}).verdict == "not shown" and one_sample([]).verdict == "not shown"
    single = compare({0: 1.0}, {0: 0.0})
    assert single.verdict == "not shown" and "not judged" in single.text()
    assert combine([up, up]) == "holds"
    assert combine([up, down]) == "not shown" and combine([down, single]) == "reversed"
    assert combine([single]) == "not shown"
    with pytest.raises(ValueError, match="as many"):
        paired([1.0, 2.0], [1.0])
