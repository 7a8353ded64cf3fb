"""Estimates, paired differences and the stopping rule against hand-computed values."""

from __future__ import annotations

import math

import pytest

from tdsim.study.stats import (
    estimate,
    fieller_ratio,
    final_count,
    holm,
    interval_confidence,
    paired_difference,
    t_quantile,
)


def test_estimate_matches_hand_computation():
    """[1..5]: mean 3, sd sqrt(2.5), 95% half-width t(0.975, 4) * sd / sqrt(5)."""
    e = estimate([1, 2, 3, 4, 5])
    assert (e.n, e.mean) == (5, 3.0)
    assert e.sd == pytest.approx(math.sqrt(2.5))
    assert t_quantile(0.95, 4) == pytest.approx(2.776445, abs=1e-6)
    assert e.halfwidth == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert (e.low, e.high) == pytest.approx((3 - e.halfwidth, 3 + e.halfwidth))


def test_estimate_of_one_value_has_no_interval():
    """One run gives a mean but no half-width (NaN), and an infinite relative half-width."""
    e = estimate([7.0])
    assert (e.n, e.mean) == (1, 7.0)
    assert math.isnan(e.halfwidth)
    assert e.rel_halfwidth == math.inf


def test_estimate_drops_nan_values():
    """A NaN (e.g. a ratio over zero exits) is left out, not propagated."""
    assert estimate([1.0, math.nan, 3.0]).n == 2


def test_constant_values_have_zero_halfwidth_and_zero_relative_halfwidth():
    """A deterministic metric has an exact mean: half-width 0, target met."""
    e = estimate([4, 4, 4])
    assert (e.halfwidth, e.rel_halfwidth) == (0.0, 0.0)


def test_paired_difference_matches_hand_values():
    """Differences (2, 1, 3) over the common replications: mean 2, sd 1, t(0.975, 2)."""
    treatment = {0: 12.0, 1: 21.0, 2: 33.0, 5: 99.0}  # replication 5 has no partner
    baseline = {0: 10.0, 1: 20.0, 2: 30.0, 3: 40.0}
    d = paired_difference(treatment, baseline)
    assert (d.n, d.mean, d.sd) == (3, 2.0, 1.0)
    assert d.halfwidth == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)


def test_pairing_removes_the_shared_noise():
    """Strategies offset by a constant under common random numbers differ with zero spread."""
    base = {r: v for r, v in enumerate([3.0, 9.0, 1.0, 7.0])}
    d = paired_difference({r: v + 2.5 for r, v in base.items()}, base)
    assert (d.mean, d.halfwidth) == (2.5, 0.0)


def test_final_count_is_the_stein_formula_with_the_first_stage_dof():
    """sd 2, target 0.5 at 97.5%: ceil((t(0.9875, 9) * 2 / 0.5)^2) = ceil(115.35) = 116,
    capped at max."""
    c = t_quantile(interval_confidence(0.95, True), 9)
    assert c == pytest.approx(2.685011, abs=1e-6)
    assert final_count(10, [(2.0, 0.5)], interval_confidence(0.95, True), 200) == 116
    assert final_count(10, [(2.0, 0.5)], interval_confidence(0.95, True), 50) == 50


@pytest.mark.parametrize(
    ("spreads", "expected"),
    [
        ([(1.0, 10.0)], 10),              # already narrow enough: the first stage is all
        ([(1.0, 10.0), (3.0, 1.0)], 65),  # the widest quantity decides: ceil((2.685*3)^2)
        ([(0.0, 0.0)], 10),               # a constant needs nothing more
        ([(1.0, 0.0)], 80),               # a varying quantity around a zero mean: max
        ([(math.nan, 1.0)], 10),          # no spread estimate (a failed cell): no growth
    ],
)
def test_final_count(spreads, expected):
    """At least the first stage, at most max, enough for the worst quantity."""
    assert final_count(10, spreads, interval_confidence(0.95, True), 80) == expected


def test_sequential_intervals_use_a_higher_confidence():
    """A nominal 95% sequential study computes its intervals at 97.5%."""
    assert interval_confidence(0.95, False) == 0.95
    assert interval_confidence(0.95, True) == pytest.approx(0.975)


def test_p_value_matches_the_t_test():
    """[1..5] against 0: t = 3 / (sd / sqrt 5) = 4.243 on 4 dof, two-sided p = 0.01324."""
    assert estimate([1, 2, 3, 4, 5]).p_value == pytest.approx(0.013236, abs=1e-6)
    assert estimate([2, 2, 2]).p_value == 0.0
    assert estimate([0, 0, 0]).p_value == 1.0


def test_holm_adjusts_step_down_and_stays_monotone():
    """p = (0.01, 0.04, 0.03, nan): sorted 0.01*3, 0.03*2, 0.04*1 -> 0.03, 0.06, 0.06."""
    adjusted = holm([0.01, 0.04, 0.03, math.nan])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(adjusted[3])


def test_fieller_interval_matches_scipy_free_hand_computation():
    """Paired T, B: the interval's ends are the roots of the Fieller quadratic, and it
    contains the ratio of the means."""
    t = {0: 12.0, 1: 15.0, 2: 11.0, 3: 14.0, 4: 13.0}
    b = {0: 10.0, 1: 12.0, 2: 9.5, 3: 11.0, 4: 10.5}
    r = fieller_ratio(t, b)
    assert r.ratio == pytest.approx(65 / 53)
    n, q = 5, t_quantile(0.95, 4) ** 2
    xs, ys = list(t.values()), list(b.values())
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs) / (n - 1)
    syy = sum((y - my) ** 2 for y in ys) / (n - 1)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / (n - 1)
    for root in (r.low, r.high):
        lhs = (mx - root * my) ** 2
        rhs = q / n * (sxx - 2 * root * sxy + root**2 * syy)
        assert lhs == pytest.approx(rhs)
    assert r.low < r.ratio < r.high


def test_fieller_interval_is_unbounded_when_the_baseline_may_be_zero():
    """A baseline mean indistinguishable from 0 gives no bounded ratio."""
    r = fieller_ratio({0: 1.0, 1: 2.0, 2: 3.0}, {0: -1.0, 1: 1.5, 2: 0.1})
    assert not r.bounded


def test_exactly_proportional_pairs_have_an_exact_ratio():
    """T = 1.5 B in every replication: the ratio is 1.5 whatever the baseline's spread."""
    b = {0: 1.0, 1: 9.0, 2: 0.5}
    r = fieller_ratio({k: 1.5 * v for k, v in b.items()}, b)
    assert (r.ratio, r.low, r.high) == pytest.approx((1.5, 1.5, 1.5))
