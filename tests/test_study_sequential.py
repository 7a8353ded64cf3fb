"""The two-stage sequential procedure keeps its promise: intervals cover known truths at
least 94% of the time at a nominal 95%, for means and paired differences, normal and skewed.

Each repetition is a whole sequential study (its own seed, hence its own replication seeds)
run through the study runner on a fake model whose metrics have known means
(tests/study_fakes.py).  A second test checks the procedure itself over a grid of
distributions and targets, faster, without the runner.  The seeds are fixed, so the tests
are deterministic; the binomial noise of a coverage estimate over 1,000 studies is about
0.007 around 0.95.
"""

from __future__ import annotations

import math
import random

import pytest
from study_fakes import (
    GAMMA_MEAN,
    SKEWED_DIFF,
    STRATEGY_OFFSET,
    resolve,
    skewed_runner,
    true_exits_mean,
    write_study,
)

from tdsim.study.runner import run_study
from tdsim.study.spec import load_study
from tdsim.study.stats import MIN_FIRST_STAGE, estimate, final_count, interval_confidence

STUDIES = 1000

MEANS = """
question = "Do sequential intervals of means cover the truth?"
scenario = "base.toml"
strategies = ["current"]
metrics = ["exits", "host_state_reload"]
seed = {seed}
[replications]
target_rel_halfwidth = 0.2
min = 10
max = 80
metrics = ["host_state_reload"]
"""

DIFFERENCES = """
question = "Do sequential intervals of paired differences cover the truth?"
scenario = "base.toml"
strategies = ["current", "eager"]
metrics = ["wrmsr.total", "vcpu_put"]
seed = {seed}
[replications]
target_rel_halfwidth = 0.03
min = 10
max = 80
metrics = ["vcpu_put"]
"""


def _coverage(tmp_path, body: str, check) -> tuple[dict[str, int], list[int]]:
    hits: dict[str, int] = {}
    counts = []
    for k in range(STUDIES):
        study = load_study(write_study(tmp_path, body.format(seed=10_000 + k)))
        s = run_study(study, tmp_path / f"out{k}", run_one=skewed_runner, resolver=resolve,
                      write_outputs=False).summary
        for name, covered in check(s).items():
            hits[name] = hits.get(name, 0) + covered
        counts.append(s.cells[(0, study.strategies[0], study.metrics[0].name)].n)
    return hits, counts


@pytest.mark.slow
def test_sequential_means_cover_the_truth(tmp_path):
    """1,000 sequential studies targeting a skewed mean: both the targeted (gamma) mean and
    the other (normal) one cover in at least 94% of the studies."""
    hits, counts = _coverage(tmp_path, MEANS, lambda s: {
        "normal mean": s.cells[(0, "current", "exits")].covers(true_exits_mean({})),
        "skewed mean": s.cells[(0, "current", "host_state_reload")].covers(GAMMA_MEAN)})
    assert min(counts) == MIN_FIRST_STAGE < max(counts)  # the second stage did something
    for name, n in hits.items():
        assert n >= 0.94 * STUDIES, (name, n / STUDIES)


@pytest.mark.slow
def test_sequential_paired_differences_cover_the_truth(tmp_path):
    """1,000 sequential studies targeting a skewed paired difference: it and a normal one
    cover in at least 94% of the studies."""
    truth = STRATEGY_OFFSET["eager"] - STRATEGY_OFFSET["current"]
    hits, counts = _coverage(tmp_path, DIFFERENCES, lambda s: {
        "normal difference": s.paired[(0, "eager", "wrmsr.total")].covers(truth),
        "skewed difference": s.paired[(0, "eager", "vcpu_put")].covers(SKEWED_DIFF)})
    assert min(counts) == MIN_FIRST_STAGE < max(counts)
    for name, n in hits.items():
        assert n >= 0.94 * STUDIES, (name, n / STUDIES)


# --- the procedure alone, over a grid of distributions and targets ------------------------

def _normal(rng: random.Random) -> float:
    return rng.gauss(100.0, 20.0)


def _gamma(rng: random.Random) -> float:
    return rng.gammavariate(4.0, 25.0)


def _lognormal(rng: random.Random) -> float:
    return rng.lognormvariate(0.0, 0.3)


def _poisson(rng: random.Random) -> float:
    # Poisson(1) by inversion: rare-event counts (violations per run) are like this.
    u, k, p = rng.random(), 0, math.exp(-1.0)
    cdf = p
    while u > cdf:
        k += 1
        p /= k
        cdf += p
    return float(k)


def _paired_gamma(rng: random.Random) -> float:
    # eager - current under common random numbers: 5% of a shared Gamma(2, 50) plus noise.
    return 0.05 * rng.gammavariate(2.0, 50.0) + rng.gauss(0.0, 3.0)


DISTRIBUTIONS = {
    "normal": (_normal, 100.0),
    "gamma, skewness 1": (_gamma, 100.0),
    "lognormal, sigma 0.3": (_lognormal, math.exp(0.045)),
    "Poisson(1)": (_poisson, 1.0),
    "paired difference, skewed": (_paired_gamma, 5.0),
}
TARGETS = (0.02, 0.1, 0.2, 0.3, 0.5)  # from "always the cap" to "the first stage will do"


def procedure_coverage(draw, truth: float, target: float, studies: int, seed: int,
                       *, n0: int = MIN_FIRST_STAGE, cap: int = 150) -> float:
    """Coverage of the two-stage procedure exactly as the runner applies it to one quantity
    whose relative target is `target` (of its first-stage mean)."""
    conf = interval_confidence(0.95, True)
    rng = random.Random(seed)
    hits = 0
    for _ in range(studies):
        xs = [draw(rng) for _ in range(n0)]
        first = estimate(xs, conf)
        n = final_count(n0, [(first.sd, target * abs(first.mean))], conf, cap)
        xs += [draw(rng) for _ in range(n - n0)]
        hits += estimate(xs, conf).covers(truth)
    return hits / studies


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_procedure_covers_over_distributions_and_targets(name):
    """4,000 studies per distribution and target: coverage at least 0.94 everywhere."""
    draw, truth = DISTRIBUTIONS[name]
    j = list(DISTRIBUTIONS).index(name)
    for i, target in enumerate(TARGETS):
        cov = procedure_coverage(draw, truth, target, 4000, seed=1000 * j + i)
        assert cov >= 0.94, (name, target, cov)


def test_procedure_coverage_quick_check():
    """A fast version for every run of the suite: 2,000 studies of the skewed gamma metric
    at the target where coverage dips most cover in at least 94% (0.961 here; the same
    procedure with the plain 95% critical value gives 0.930 on these seeds)."""
    assert procedure_coverage(_gamma, 100.0, 0.3, 2000, seed=7) >= 0.94
