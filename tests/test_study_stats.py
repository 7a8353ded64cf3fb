"""Estimates, paired differences and the stopping rule against hand-computed values."""

from __future__ import annotations

import math

import pytest

from tdsim.study.stats import estimate, paired_difference, replications_needed, t_quantile


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


@pytest.mark.parametrize(
    ("current", "rels", "target", "maximum", "expected"),
    [
        (5, [0.04, 0.01], 0.05, 50, 5),     # every metric on target: stop
        (5, [0.06], 0.05, 50, 8),           # ceil(5 * 1.44) = 8
        (5, [0.051], 0.05, 50, 6),          # at least one more
        (5, [0.5], 0.05, 50, 10),           # at most doubles
        (5, [math.inf], 0.05, 50, 10),      # mean 0 with spread: double
        (40, [0.5], 0.05, 50, 50),          # capped
        (50, [0.5], 0.05, 50, 50),          # at the cap: stop
    ],
)
def test_replications_needed(current, rels, target, maximum, expected):
    """The next replication count grows with (rel/target)^2, at least +1, at most x2, capped."""
    assert replications_needed(current, rels, target, maximum) == expected
