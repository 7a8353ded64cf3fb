"""From run rows to estimates: per design point, strategy and metric the estimate with its CI,
and per contrast the study asks about (a strategy minus the baseline strategy, or a level of
a compared factor minus its baseline level) the paired difference, the relative difference,
the Holm-adjusted p-value and a verdict against the study's `min_effect`.

**Ratio metrics** ``a/b`` are estimated as the study's `ratio` says: ``ratio_of_means``
(the default) is sum(a) / sum(b) over the replications, the quantity "a per b" of the whole
run; ``mean_of_ratios`` averages the per-run ratios a/b.  The ratio of means gets a
delta-method interval: each replication contributes its linearized value
``R + (a_r - R b_r) / mean(b)``, whose mean is exactly R, so intervals, paired differences
and the sequential rule all work on these values unchanged.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tdsim.study.design import DesignPoint, Metric, Study, point_key, term_reported
from tdsim.study.stats import Estimate, Ratio, estimate, fieller_ratio, holm, paired_difference

CellKey = tuple[int, str, str]  # (point index, strategy, metric name)
Verdict = Literal["material", "detected", "negligible", "inconclusive"]

MINUS = "\u2212"


@dataclass(frozen=True)
class Contrast:
    """One difference the study asks about: the treatment cell minus the baseline cell,
    paired by replication (common random numbers)."""

    comparison: int                # index into study.comparisons
    treatment: tuple[int, str]     # (point index, strategy)
    baseline: tuple[int, str]
    treatment_name: str            # "eager", or a level label ("copy")
    baseline_name: str             # "current", or "in_place"
    where: str                     # the point (and strategy) it is taken at

    @property
    def what(self) -> str:
        return f"{self.treatment_name} {MINUS} {self.baseline_name}"


@dataclass(frozen=True)
class Difference:
    """A contrast's paired difference for one metric, with its reading."""

    contrast: Contrast
    metric: str
    diff: Estimate
    treatment: Estimate
    baseline: Estimate
    relative: Ratio          # mean(treatment) / mean(baseline), Fieller interval
    p_value: float
    p_holm: float            # nan outside the Holm family (cost samples)
    threshold: float         # the min_effect in the metric's unit
    verdict: Verdict

    @property
    def direction(self) -> int:
        return 0 if self.diff.mean == 0 or math.isnan(self.diff.mean) else (
            1 if self.diff.mean > 0 else -1)


@dataclass
class Summary:
    study: Study
    points: list[DesignPoint]
    values: dict[CellKey, dict[int, float]] = field(default_factory=dict)  # rep -> value
    cells: dict[CellKey, Estimate] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)
    runs: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)  # (ok, error)
    missing: dict[str, int] = field(default_factory=dict)  # metric -> ok runs lacking it

    @property
    def confidence(self) -> float:
        """The confidence the intervals are computed at (`Study.interval_confidence`)."""
        return self.study.interval_confidence

    @property
    def paired(self) -> dict[CellKey, Estimate]:
        """The strategy contrasts' paired differences by (point, strategy, metric)."""
        return {(d.contrast.treatment[0], d.contrast.treatment[1], d.metric): d.diff
                for d in self.differences
                if self.study.comparisons[d.contrast.comparison].dimension is None}

    def difference(self, contrast: Contrast, metric: str) -> Difference:
        return next(d for d in self.differences
                    if d.contrast == contrast and d.metric == metric)

    def nominal(self, point: DesignPoint) -> bool:
        """Whether `point` is at the nominal costs (always, without an uncertainty study)."""
        c = self.study.cost_dimension
        return c is None or point.levels[c] == 0

    def write_csv(self, summary_path: str | Path, paired_path: str | Path) -> None:
        study = self.study
        factor_keys = [k for _, d in study.factor_dimensions for k in d.keys]
        cost_dim = study.cost_dimension
        extra = ["cost_sample"] if cost_dim is not None else []
        conf = f"{self.confidence:g}"
        by_index = {p.index: p for p in self.points}

        def point_cells(p: DesignPoint) -> list[Any]:
            vals = dict(p.values)
            cells: list[Any] = [vals[k] for k in factor_keys]
            if cost_dim is not None:
                cells.append(study.dimensions[cost_dim].level_label(p.levels[cost_dim]))
            return cells

        with Path(summary_path).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(factor_keys + extra + [
                "strategy", "metric", "estimator", "n", "mean", "sd", f"ci{conf}_halfwidth",
                "ci_low", "ci_high", "errors"])
            for p in self.points:
                for s in study.strategies:
                    for m in study.metrics:
                        e = self.cells[(p.index, s, m.name)]
                        w.writerow(point_cells(p) + [
                            s, m.name, estimator_name(study, m), e.n, e.mean, e.sd,
                            e.halfwidth, e.low, e.high, self.runs[(p.index, s)][1]])
        with Path(paired_path).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(factor_keys + extra + [
                "strategy", "contrast", "metric", "n_pairs", "difference",
                f"ci{conf}_halfwidth", "ci_low", "ci_high", "baseline_mean", "ratio",
                "ratio_low", "ratio_high", "p_value", "p_holm", "min_effect", "verdict"])
            for d in self.differences:
                c, e, r = d.contrast, d.diff, d.relative
                w.writerow(point_cells(by_index[c.treatment[0]]) + [
                    c.treatment[1], c.what.replace(MINUS, "-"), d.metric, e.n, e.mean,
                    e.halfwidth, e.low, e.high, d.baseline.mean, r.ratio, r.low, r.high,
                    d.p_value, d.p_holm, d.threshold, d.verdict])


def estimator_name(study: Study, metric: Metric) -> str:
    if not metric.is_ratio:
        return "mean"
    return study.ratio_estimator


def contrasts(study: Study, points: list[DesignPoint]) -> list[Contrast]:
    """Every contrast of every comparison, in design order."""
    out: list[Contrast] = []
    at = {p.levels: p for p in points}
    for ci, comp in enumerate(study.comparisons):
        for p in points:
            if comp.dimension is None:
                for s in study.strategies:
                    if s != study.baseline:
                        out.append(Contrast(ci, (p.index, s), (p.index, study.baseline), s,
                                            study.baseline, study.point_label(p)))
                continue
            d_i = comp.dimension
            if p.levels[d_i] == comp.baseline_level:
                continue
            dim = study.dimensions[d_i]
            base_levels = list(p.levels)
            base_levels[d_i] = comp.baseline_level
            base = at[tuple(base_levels)]
            where_parts = [f"{d.label}={d.level_label(lv)}"
                           for i, (d, lv) in enumerate(zip(study.dimensions, p.levels,
                                                           strict=True))
                           if i != d_i and d.role == "factor"]
            for s in study.strategies:
                where = ", ".join(where_parts + ([f"strategy {s}"]
                                                 if len(study.strategies) > 1 else []))
                out.append(Contrast(ci, (p.index, s), (base.index, s),
                                    dim.level_label(p.levels[d_i]),
                                    dim.level_label(comp.baseline_level),
                                    where or "(base scenario)"))
    return out


def cell_values(study: Study, metric: Metric, parts: dict[int, tuple[float, float]]
                ) -> dict[int, float]:
    """The per-replication values a cell's estimate averages (module docstring)."""
    if not metric.is_ratio or study.ratio_estimator == "mean_of_ratios":
        return {r: (a / b if b != 0 else math.nan) for r, (a, b) in sorted(parts.items())}
    n = len(parts)
    if n == 0:
        return {}
    sum_a = math.fsum(a for a, _ in parts.values())
    sum_b = math.fsum(b for _, b in parts.values())
    if sum_b == 0:
        return {r: math.nan for r in sorted(parts)}
    ratio, mean_b = sum_a / sum_b, sum_b / n
    return {r: ratio + (a - ratio * b) / mean_b for r, (a, b) in sorted(parts.items())}


def summarize(study: Study, rows: Iterable[dict[str, Any]], only: set[int] | None = None
              ) -> Summary:
    """Estimates from the ok rows; error rows only count as errors.  With `only`, just the
    cells and contrasts of those points (the sequential decision for one group)."""
    points = study.points()
    if only is not None:
        points = [p for p in points if p.index in only]
    index_of = {p.key: p.index for p in points}
    summary = Summary(study, points)
    counts: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    parts: dict[CellKey, dict[int, tuple[float, float]]] = defaultdict(dict)
    missing: dict[str, int] = defaultdict(int)
    rows = list(rows)
    # Counter families (late_abort.<kind>, exits.reason.<NAME>, violations.<invariant>) list
    # only the keys that occurred, so a name some run reported is 0 where it is absent.  A name
    # no run reported is more likely a counter that never fired here, or a model that does
    # not count it: it stays missing and the report says so.
    seen = {n for r in rows if r["status"] == "ok" for n in r["metrics"]}
    absent = {m.name: 0.0 if all(term_reported(n, seen) or n.startswith("violations.")
                                 for n in m.needs) else None for m in study.metrics}
    for row in rows:
        pi = index_of.get(point_key(row["point"]))
        if pi is None:
            continue
        ok = row["status"] == "ok"
        counts[(pi, row["strategy"])][0 if ok else 1] += 1
        if not ok:
            continue
        for m in study.metrics:
            v = m.parts(row["metrics"], absent[m.name])
            if v is None:
                missing[m.name] += 1
            else:
                parts[(pi, row["strategy"], m.name)][row["replication"]] = v
    conf = study.interval_confidence
    for p in points:
        for s in study.strategies:
            summary.runs[(p.index, s)] = (counts[(p.index, s)][0], counts[(p.index, s)][1])
            for m in study.metrics:
                k = (p.index, s, m.name)
                summary.values[k] = cell_values(study, m, parts[k])
                summary.cells[k] = estimate(summary.values[k].values(), conf)
    wanted = [c for c in contrasts(study, study.points())
              if only is None or (c.treatment[0] in only and c.baseline[0] in only)]
    summary.differences = _differences(summary, wanted)
    summary.missing = dict(missing)
    return summary


def _differences(summary: Summary, contrast_list: list[Contrast]) -> list[Difference]:
    study = summary.study
    conf = summary.confidence
    by_index = {p.index: p for p in summary.points}
    raw = []
    for c in contrast_list:
        for m in study.metrics:
            t_key = (c.treatment[0], c.treatment[1], m.name)
            b_key = (c.baseline[0], c.baseline[1], m.name)
            t_vals, b_vals = summary.values[t_key], summary.values[b_key]
            diff = paired_difference(t_vals, b_vals, conf)
            raw.append((c, m.name, diff, fieller_ratio(t_vals, b_vals, conf)))
    # The Holm family: every difference the report marks, i.e. those at the nominal costs.
    family = [i for i, (c, _, _, _) in enumerate(raw)
              if summary.nominal(by_index[c.treatment[0]])]
    adjusted = holm([raw[i][2].p_value for i in family])
    p_holm = [math.nan] * len(raw)
    for i, p in zip(family, adjusted, strict=True):
        p_holm[i] = p
    out = []
    for (c, metric, diff, ratio), ph in zip(raw, p_holm, strict=True):
        base = summary.cells[(c.baseline[0], c.baseline[1], metric)]
        threshold = study.min_effect(metric).threshold(base.mean) if base.n else math.nan
        out.append(Difference(
            c, metric, diff, summary.cells[(c.treatment[0], c.treatment[1], metric)], base,
            ratio, diff.p_value, ph, threshold, verdict(diff, ph, threshold, 1.0 - conf)))
    return out


def verdict(diff: Estimate, p_holm: float, threshold: float, alpha: float) -> Verdict:
    """``material``: significant after Holm and the whole interval beyond the min effect;
    ``negligible``: the whole interval within +-min effect (an equivalence test at the same
    confidence); ``detected``: significant but possibly smaller than what matters;
    ``inconclusive``: none of these (more replications would tell)."""
    if diff.n < 2 or math.isnan(diff.halfwidth) or math.isnan(threshold):
        return "inconclusive"
    significant = not math.isnan(p_holm) and p_holm <= alpha
    if significant and (diff.low > threshold or diff.high < -threshold):
        return "material"
    if -threshold <= diff.low and diff.high <= threshold:
        return "negligible"
    return "detected" if significant else "inconclusive"


@dataclass
class StudyRun:
    """What a study produced (`tdsim.study.runner.run_study`): its rows, their summary and
    the run's bookkeeping; the report (`tdsim.study.report`) is written from it."""

    study: Study
    rows: list[dict[str, Any]]       # one per run, in design order
    summary: Summary
    ran: int = 0                     # runs executed now
    reused: int = 0                  # runs taken from the store (--resume)
    stale_rows: int = 0              # rows in the store that match no run of this study
    skipped_lines: int = 0           # torn/corrupt store lines
    foreign_rows: int = 0            # reused rows another model wrote (--allow-mixed)
    resolved: dict[int, dict[str, Any]] = field(default_factory=dict)  # point -> scenario
    files: list[Path] = field(default_factory=list)
    executor_name: str = ""

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] != "ok"]
