"""The sequential decision: from a group's first-stage runs, its final replication count.

A *group* is a set of design points whose counts move together (`Study.sequential_groups`):
one point when strategies are compared, the levels of a compared factor otherwise, so paired
runs stay paired.  The quantity that sets the count is the one the study asks about: each
contrast's paired difference when the study compares (the target half-width is the relative
target times the baseline's mean), each cell's mean when it does not (times that mean).
The count comes from the first stage alone (`tdsim.study.stats.final_count`), so it is the
same whatever order the runs finished in, and a resumed study takes the same decision.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tdsim.study.design import Study
from tdsim.study.stats import final_count
from tdsim.study.summary import summarize


def spreads(study: Study, rows: Iterable[dict[str, Any]], group: list[int]
            ) -> list[tuple[float, float]]:
    """(sd, target half-width) of every quantity that sets the group's count."""
    reps = study.replications
    target = reps.target_rel_halfwidth or 0.0
    summary = summarize(study, rows, only=set(group))
    out = []
    if study.comparisons:
        for d in summary.differences:
            if d.contrast.treatment[0] in group and d.metric in reps.metrics:
                out.append((d.diff.sd, target * abs(d.baseline.mean)))
        return out
    for p in group:
        for s in study.strategies:
            for m in reps.metrics:
                e = summary.cells[(p, s, m)]
                out.append((e.sd, target * abs(e.mean)))
    return out


def decide(study: Study, rows: list[dict[str, Any]], group: list[int]) -> int:
    """The group's final replication count, from its first-stage `rows`.  A group with a
    failed run stays at the first stage: more replications would fail alike."""
    reps = study.replications
    if any(r["status"] != "ok" for r in rows):
        return reps.min
    return final_count(reps.min, spreads(study, rows, group), study.interval_confidence,
                       reps.max)
