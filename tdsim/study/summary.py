"""From run rows to tables: per design point, strategy and metric the mean with its CI, and per
non-baseline strategy the paired difference against the baseline."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdsim.study.spec import DesignPoint, Study, point_key
from tdsim.study.stats import Estimate, estimate, paired_difference

CellKey = tuple[int, str, str]  # (point index, strategy, metric name)


@dataclass
class Summary:
    study: Study
    points: list[DesignPoint]
    values: dict[CellKey, dict[int, float]] = field(default_factory=dict)  # rep -> value
    cells: dict[CellKey, Estimate] = field(default_factory=dict)
    paired: dict[CellKey, Estimate] = field(default_factory=dict)  # strategy - baseline
    runs: dict[tuple[int, str], tuple[int, int]] = field(default_factory=dict)  # (ok, error)
    missing: dict[str, int] = field(default_factory=dict)  # metric -> ok runs lacking it

    def rel_halfwidths(self, point_index: int, metrics: Iterable[str]) -> list[float]:
        """The relative CI half-width of each (strategy, metric) at a point."""
        return [self.cells[(point_index, s, m)].rel_halfwidth
                for s in self.study.strategies for m in metrics]

    def write_csv(self, summary_path: str | Path, paired_path: str | Path) -> None:
        factor_keys = [k for d in self.study.dimensions for k in d.keys]
        conf = f"{self.study.confidence:g}"
        with Path(summary_path).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(factor_keys + ["strategy", "metric", "n", "mean", "sd",
                                      f"ci{conf}_halfwidth", "ci_low", "ci_high", "errors"])
            for p in self.points:
                vals = [v for _, v in p.values]
                for s in self.study.strategies:
                    for m in self.study.metrics:
                        e = self.cells[(p.index, s, m.name)]
                        w.writerow(vals + [s, m.name, e.n, e.mean, e.sd, e.halfwidth, e.low,
                                           e.high, self.runs[(p.index, s)][1]])
        with Path(paired_path).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(factor_keys + ["strategy", "baseline", "metric", "n_pairs",
                                      "mean_difference", f"ci{conf}_halfwidth", "ci_low",
                                      "ci_high", "baseline_mean"])
            for p in self.points:
                vals = [v for _, v in p.values]
                for s in self.study.strategies:
                    if s == self.study.baseline:
                        continue
                    for m in self.study.metrics:
                        e = self.paired[(p.index, s, m.name)]
                        base = self.cells[(p.index, self.study.baseline, m.name)]
                        w.writerow(vals + [s, self.study.baseline, m.name, e.n, e.mean,
                                           e.halfwidth, e.low, e.high, base.mean])


def summarize(study: Study, rows: Iterable[dict[str, Any]]) -> Summary:
    """Estimates from the ok rows; error rows only count as errors."""
    points = study.points()
    index_of = {p.key: p.index for p in points}
    summary = Summary(study, points)
    counts: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0])
    values: dict[CellKey, dict[int, float]] = defaultdict(dict)
    missing: dict[str, int] = defaultdict(int)
    rows = list(rows)
    # Counter families (late_abort.<kind>, exits.reason.<NAME>, violations.<invariant>) list
    # only the keys that occurred, so a name some run reported is 0 where it is absent.  A name
    # no run reported is more likely a typo than a counter that never fired: it stays missing.
    seen = {n for r in rows if r["status"] == "ok" for n in r["metrics"]}
    absent = {m.name: 0.0 if all(n in seen or n.startswith("violations.") for n in m.needs)
              else None for m in study.metrics}
    for row in rows:
        pi = index_of.get(point_key(row["point"]))
        if pi is None:
            continue
        ok = row["status"] == "ok"
        counts[(pi, row["strategy"])][0 if ok else 1] += 1
        if not ok:
            continue
        for m in study.metrics:
            v = m.value(row["metrics"], absent[m.name])
            if v is None:
                missing[m.name] += 1
            else:
                values[(pi, row["strategy"], m.name)][row["replication"]] = v
    conf = study.confidence
    for p in points:
        for s in study.strategies:
            summary.runs[(p.index, s)] = tuple(counts[(p.index, s)])
            for m in study.metrics:
                k = (p.index, s, m.name)
                summary.values[k] = dict(sorted(values[k].items()))
                summary.cells[k] = estimate(summary.values[k].values(), conf)
        base = study.baseline
        for s in study.strategies:
            if s == base:
                continue
            for m in study.metrics:
                summary.paired[(p.index, s, m.name)] = paired_difference(
                    summary.values[(p.index, s, m.name)],
                    summary.values[(p.index, base, m.name)], conf)
    summary.missing = dict(missing)
    return summary
