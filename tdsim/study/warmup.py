"""Choosing the warm-up from data: per-window series of chosen metrics and MSER-5.

A study that sets ``[series] metrics = [...], window_us = W`` asks each run for the model's
per-window values of those metrics (``tdsim.sim.run(scenario, windows_ns=W)`` fills
``Result.series``: each metric's increment in every window [k W, (k + 1) W) from t = 0,
warm-up included).  The series of the replications are averaged window by window, and the
MSER-5 rule (White 1997; White, Cobb & Spratt 2000) picks the truncation point: the batch of
five windows d* that minimizes the squared standard error of the mean of what is left,
``sum((Y_i - mean)^2) / (n - d)^2`` over batch means Y, for d up to half the run.  The series
are averaged over every run of a design point (replications and strategies: they share the
guest's start-up), and the report suggests the largest truncation over the points as
``warmup_us``.  A truncation at the half-way limit means the run is too short to tell, and
the report says so instead of trusting it.

When the model does not provide series (the hook is missing), the study still runs and the
report says the analysis was skipped.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from tdsim.study.design import Metric, term_value
from tdsim.study.labels import metric_label
from tdsim.study.spec_fields import Errors, parse_metric

if TYPE_CHECKING:
    from tdsim.study.summary import StudyRun

BATCH = 5


def mser(series: list[float], batch: int = BATCH) -> int:
    """The MSER-`batch` truncation point, in windows (a multiple of `batch`)."""
    n_batches = len(series) // batch
    if n_batches < 2:
        return 0
    ys = [math.fsum(series[i * batch:(i + 1) * batch]) / batch for i in range(n_batches)]
    best, best_d = math.inf, 0
    for d in range(0, n_batches // 2 + 1):
        tail = ys[d:]
        mean = math.fsum(tail) / len(tail)
        score = math.fsum((y - mean) ** 2 for y in tail) / len(tail) ** 2
        if score < best - 1e-12 * abs(best if math.isfinite(best) else 0):
            best, best_d = score, d
    return best_d * batch


def window_values(metric: Metric, series: dict[str, list[float]], window_s: float
                  ) -> list[float] | None:
    """`metric` per window from one run's series (None when a needed series is missing)."""
    if not series:
        return None
    length = min(len(v) for v in series.values())

    def term(name: str | float | None) -> list[float] | None:
        if name is None:
            return [1.0] * length
        if isinstance(name, float):
            return [name] * length
        if name == "run.measured_s":
            return [window_s] * length
        out = []
        for k in range(length):
            v = term_value(name, {key: vals[k] for key, vals in series.items()}, None)
            if v is None:
                return None
            out.append(v)
        return out

    num, den = term(metric.numerator), term(metric.denominator)
    if num is None or den is None:
        return None
    return [a / b if b else math.nan for a, b in zip(num, den, strict=True)]


def mean_series(runs: list[list[float]]) -> list[float]:
    """The replications' series averaged window by window (NaN windows skipped)."""
    length = min(len(r) for r in runs)
    out = []
    for k in range(length):
        xs = [r[k] for r in runs if not math.isnan(r[k])]
        out.append(math.fsum(xs) / len(xs) if xs else math.nan)
    return out


def analyse(result: StudyRun) -> dict[str, list[tuple[str, list[float], int]]]:
    """Per series metric: (where, mean series, MSER-5 truncation in windows) per nominal
    point that has series (-1: the truncation hit the half-way limit)."""
    study = result.study
    spec = study.series
    window_s = spec.window_us / 1e6
    points = {p.index: p for p in result.summary.points if result.summary.nominal(p)}
    out: dict[str, list[tuple[str, list[float], int]]] = {}
    for name in spec.metrics:
        metric = parse_metric(name, "series", Errors(study.path))
        cells = []
        for pi, p in points.items():
            runs = [window_values(metric, r.get("series") or {}, window_s)
                    for r in result.rows if r["point_index"] == pi and r["status"] == "ok"]
            have = [r for r in runs if r]
            if not have:
                continue
            avg = [x for x in mean_series(have) if not math.isnan(x)]
            cut = mser(avg)
            limit = (len(avg) // BATCH) // 2 * BATCH
            cells.append((study.point_label(p), avg, -1 if cut >= limit > 0 else cut))
        out[name] = cells
    return out


def warmup_section(result: StudyRun) -> list[str]:
    study = result.study
    spec = study.series
    if not spec.metrics:
        return []
    lines = ["## Warm-up (MSER-5)", ""]
    if not any(r.get("series") for r in result.rows):
        return lines + [
            "Skipped: the runs carry no per-window series.  The model does not provide "
            "them yet (the study asks `tdsim.sim.run(scenario, windows_ns=...)` for "
            "`Result.series`; docs/studies.md, Warm-up).", ""]
    analysis = analyse(result)
    rows = []
    worst_all = 0
    too_short: list[str] = []
    for name, cells in analysis.items():
        if not cells:
            rows.append([metric_label(name).text, "-", "-", "no series"])
            continue
        too_short += [f"{metric_label(name).text} at {c[0]}" for c in cells if c[2] < 0]
        fine = [c for c in cells if c[2] >= 0] or cells
        worst = max(fine, key=lambda c: c[2])
        worst_all = max(worst_all, worst[2])
        median = sorted(c[2] for c in fine)[len(fine) // 2]
        rows.append([metric_label(name).text, _us(worst[2], spec.window_us),
                     _us(median, spec.window_us), worst[0]])
    from tdsim.study.report_sections import table

    lines += table(["metric", "MSER-5 truncation (largest)", "median", "largest at"], rows)
    suggestion = worst_all * spec.window_us
    current = study.warmup_us or 0.0
    verdict = ("the study's warm-up covers it" if current >= suggestion else
               f"**the study's warm-up ({current:g} µs) is shorter**")
    lines += ["", f"Suggested `warmup_us` = {suggestion:g} µs (MSER-5 over {spec.window_us:g} "
              f"µs windows, averaged over the runs of each point, largest over the points); "
              f"{verdict}.", ""]
    if too_short:
        lines += [f"The truncation reached half the run (too short to tell; lengthen "
                  f"`sim.duration_us`) for: {'; '.join(too_short)}.", ""]
    return lines


def _us(windows: int, window_us: float) -> str:
    return f"{max(0, windows) * window_us:g} µs" if windows >= 0 else "too short"
