"""The statistics of a study: means with Student-t confidence intervals, paired differences
and the sequential stopping rule.

Runs of one design point and strategy are independent replications (different seeds), so the
sample mean with a t interval is the textbook estimator.  Strategies at one point share seeds
(common random numbers), so their per-replication differences cancel the shared guest
behaviour; the mean of the differences with its own t interval is far tighter than comparing
two independent intervals.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class Estimate:
    """Sample mean of `n` values with the half-width of its two-sided CI."""

    n: int
    mean: float
    sd: float
    halfwidth: float  # nan when n < 2
    confidence: float

    @property
    def low(self) -> float:
        return self.mean - self.halfwidth

    @property
    def high(self) -> float:
        return self.mean + self.halfwidth

    @property
    def rel_halfwidth(self) -> float:
        """Half-width as a fraction of |mean|: 0 for a constant, inf around a zero mean."""
        if self.n < 2:
            return math.inf
        if self.halfwidth == 0:
            return 0.0
        return self.halfwidth / abs(self.mean) if self.mean != 0 else math.inf

    def covers(self, value: float) -> bool:
        return self.low <= value <= self.high


def t_quantile(confidence: float, dof: int) -> float:
    """The two-sided Student-t critical value."""
    return float(_scipy_stats.t.ppf(0.5 + confidence / 2, dof))


def estimate(values: Iterable[float], confidence: float = 0.95) -> Estimate:
    """Mean and t confidence interval of the finite values (NaNs are dropped)."""
    xs = [float(x) for x in values if not math.isnan(float(x))]
    n = len(xs)
    if n == 0:
        return Estimate(0, math.nan, math.nan, math.nan, confidence)
    mean = math.fsum(xs) / n
    if n < 2:
        return Estimate(1, mean, math.nan, math.nan, confidence)
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    sd = math.sqrt(var)
    return Estimate(n, mean, sd, t_quantile(confidence, n - 1) * sd / math.sqrt(n), confidence)


def paired_difference(treatment: Mapping[int, float], baseline: Mapping[int, float],
                      confidence: float = 0.95) -> Estimate:
    """Mean and CI of treatment[r] - baseline[r] over the replications r present in both."""
    common = sorted(set(treatment) & set(baseline))
    return estimate((treatment[r] - baseline[r] for r in common), confidence)


def replications_needed(current: int, rel_halfwidths: Iterable[float], target: float,
                        maximum: int) -> int:
    """How many replications a point should have after this round (== current: stop).

    The half-width shrinks like 1/sqrt(n), so the worst metric needs about
    n * (rel / target)^2 runs.  The next round at least adds one and at most doubles n, so a
    noisy early estimate cannot overshoot wildly; `maximum` caps it.  Deterministic in the
    results, hence the same replications whatever the executor.
    """
    worst = max(rel_halfwidths, default=0.0)
    if worst <= target or current >= maximum:
        return current
    wanted = current * 2 if math.isinf(worst) else math.ceil(current * (worst / target) ** 2)
    return min(maximum, max(current + 1, min(wanted, 2 * current)))
