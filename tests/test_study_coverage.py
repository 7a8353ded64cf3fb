"""The 95% confidence intervals of a whole study cover known truths about 95% of the time.

Each repetition is a complete small study (5 replications, its own base seed) run through
the study runner, with a fake model whose metrics have known means.  With 200 repetitions the
number of covering intervals is Binomial(200, 0.95) if the intervals are right: mean 190, sd
3.1, so [180, 198] (coverage 0.90-0.99) fails a correct implementation with probability
below 0.2% — and the seeds are fixed, so the test is deterministic.
"""

from __future__ import annotations

from study_fakes import (
    BASIC,
    STRATEGY_OFFSET,
    normal_runner,
    resolve,
    true_exits_mean,
    write_study,
)

from tdsim.study.runner import run_study
from tdsim.study.spec import load_study

REPETITIONS = 200
REPLICATIONS = 5


def _coverage(tmp_path):
    body = BASIC.replace("count = 4", f"count = {REPLICATIONS}").replace(
        "x = [0, 1, 2]", "x = [1]")
    covered = {"exits": 0, "v6.16 - current": 0, "eager - current": 0}
    for k in range(REPETITIONS):
        study = load_study(write_study(tmp_path, body.replace(
            "[factors]", f"seed = {1000 * k}\n[factors]")))
        s = run_study(study, tmp_path / f"out{k}", run_one=normal_runner, resolver=resolve,
                      write_outputs=False).summary
        covered["exits"] += s.cells[(0, "current", "exits")].covers(true_exits_mean({"x": 1}))
        for strat in ("v6.16", "eager"):
            truth = STRATEGY_OFFSET[strat] - STRATEGY_OFFSET["current"]
            covered[f"{strat} - current"] += s.paired[(0, strat, "wrmsr.total")].covers(truth)
    return covered


def test_confidence_intervals_cover_the_truth_about_95_percent(tmp_path):
    """Means and paired differences: coverage within the binomial band [0.90, 0.99]."""
    covered = _coverage(tmp_path)
    for what, hits in covered.items():
        assert 0.90 * REPETITIONS <= hits <= 0.99 * REPETITIONS, (what, hits)
