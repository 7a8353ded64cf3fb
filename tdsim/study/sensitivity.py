"""Do the study's conclusions survive the uncertainty of the model's costs?

A study with ``[uncertainty]`` runs every design point at the nominal costs and at K Latin
hypercube samples of the uncertain costs (`tdsim.study.costs`), with the same replication
seeds at every sample (common random numbers), so a change between samples is the costs'
doing, not the guest's.  For each *conclusion* (a contrast and metric at the nominal costs,
read as its verdict: "higher by more than the minimum effect", "no difference that matters",
...) this module reports:

* the share of the cost space where it holds: the share of samples whose estimated effect
  satisfies the same claim (and how many of those the sample's own interval confirms);
* which costs it depends on most: the partial rank correlation coefficient (PRCC; Marino et
  al. 2008) between each cost and the claim's *margin* (how far the effect is on the claim's
  side of its threshold), i.e. the cost's monotone effect on the claim with the other costs'
  effects removed.  Positive: a higher cost makes the claim safer.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tdsim.study.fmt import MINUS, interval, pct
from tdsim.study.labels import metric_label
from tdsim.study.stats import holm
from tdsim.study.summary import Difference, Summary
from tdsim.study.tdist import t_cdf

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

TOP_COSTS = 3
MAX_LISTED = 6
ALPHA = 0.05  # a cost is named only if its PRCC differs from 0 at this level (Holm)
CLAIM_WORDS = {"> +min effect": "higher by more than the minimum effect",
               "< \u2212min effect": "lower by more than the minimum effect",
               "within ±min effect": "no difference that matters",
               "> 0": "higher", "< 0": "lower"}


@dataclass
class Conclusion:
    """One nominal difference and how it fares over the cost samples."""

    nominal: Difference
    claim: str                             # "> +m", "< -m", "within ±m", "> 0", "< 0"
    samples: list[Difference] = field(default_factory=list)
    holds: list[bool] = field(default_factory=list)
    confirmed: list[bool] = field(default_factory=list)
    prcc: dict[str, float] = field(default_factory=dict)
    prcc_p: dict[str, float] = field(default_factory=dict)  # Holm-adjusted p-values

    @property
    def share(self) -> float:
        return sum(self.holds) / len(self.holds) if self.holds else math.nan

    def top_costs(self, k: int = TOP_COSTS) -> list[tuple[str, float]]:
        """The costs with the largest |PRCC| among those significant after Holm, strongest
        first (a PRCC of an inert cost is noise of about 1/sqrt(samples - costs))."""
        ranked = sorted(((c, v) for c, v in self.prcc.items()
                         if not math.isnan(v) and self.prcc_p.get(c, 1.0) <= ALPHA),
                        key=lambda cv: -abs(cv[1]))
        return ranked[:k]


@dataclass
class Analysis:
    summary: Summary
    costs: list[str]
    sample_costs: list[tuple[int, ...]]    # per sample, the cost values
    conclusions: list[Conclusion]
    method: str = "PRCC"

    def answer(self) -> list[str]:
        """The lines the report's Answer gets: a headline, then each conclusion that does not
        hold everywhere (up to `MAX_LISTED`, least robust first)."""
        return answer(self)

    def section(self) -> list[str]:
        """The report's Cost uncertainty section."""
        return section(self)


def _claim(d: Difference) -> tuple[str, Callable[[float, float], float]]:
    """The nominal verdict as a claim about an effect e and threshold m, with its margin
    (>= 0 when the claim holds)."""
    e = d.diff.mean
    if d.verdict == "material":
        if e > 0:
            return "> +min effect", lambda x, m: x - m
        return "< \u2212min effect", lambda x, m: -x - m
    if d.verdict == "negligible":
        return "within ±min effect", lambda x, m: m - abs(x)
    if e >= 0:
        return "> 0", lambda x, m: x
    return "< 0", lambda x, m: -x


def _margin_holds_ci(d: Difference, claim: str) -> bool:
    e, m = d.diff, d.threshold
    if claim.startswith(">"):
        return e.low > (m if "min" in claim else 0.0)
    if claim.startswith("<"):
        return e.high < (-m if "min" in claim else 0.0)
    return -m <= e.low and e.high <= m


def analyse(summary: Summary) -> Analysis:
    study = summary.study
    c_dim = study.cost_dimension
    if c_dim is None or study.uncertainty is None:
        raise ValueError(f"{study.path}: the study has no [uncertainty] table")
    dim = study.dimensions[c_dim]
    costs = [k.removeprefix("costs.") for k in dim.keys]
    sample_costs = [tuple(int(v) for v in lv) for lv in dim.levels[1:]]
    by_index = {p.index: p for p in summary.points}
    # The same contrast at every cost level: key by (comparison, where without the costs,
    # what, metric) and the cost level of the treatment point.
    nominal: list[Difference] = []
    at_level: dict[tuple[int, str, str, str, int], Difference] = {}
    for d in summary.differences:
        level = by_index[d.contrast.treatment[0]].levels[c_dim]
        key = (d.contrast.comparison, _where(d, summary), d.contrast.what, d.metric)
        if level == 0:
            nominal.append(d)
        else:
            at_level[key + (level,)] = d
    conclusions = []
    for d in nominal:
        claim, margin = _claim(d)
        c = Conclusion(d, claim)
        key = (d.contrast.comparison, _where(d, summary), d.contrast.what, d.metric)
        margins = []
        for level in range(1, len(dim.levels)):
            s = at_level[key + (level,)]
            c.samples.append(s)
            x = margin(s.diff.mean, s.threshold)
            margins.append(x)
            c.holds.append(not math.isnan(x) and x >= 0)
            c.confirmed.append(_margin_holds_ci(s, claim))
        coefficients, dof = prcc_with_dof(sample_costs, margins)
        c.prcc = dict(zip(costs, coefficients, strict=True))
        c.prcc_p = dict(zip(costs, holm([_prcc_p(r, dof) for r in coefficients]),
                            strict=True))
        conclusions.append(c)
    return Analysis(summary, costs, sample_costs, conclusions)


def _where(d: Difference, summary: Summary) -> str:
    """The contrast's place without the cost sample (identical at every level)."""
    study = summary.study
    p = next(p for p in summary.points if p.index == d.contrast.treatment[0])
    c_dim = study.cost_dimension
    return ",".join(str(lv) for i, lv in enumerate(p.levels) if i != c_dim) + \
        f"|{d.contrast.treatment[1]}"


def _prcc_p(r: float, dof: int) -> float:
    """Two-sided p-value of a (partial) correlation r on `dof` degrees of freedom."""
    if math.isnan(r) or dof < 1:
        return math.nan
    if abs(r) >= 1.0:
        return 0.0
    t = abs(r) * math.sqrt(dof / (1.0 - r * r))
    return 2.0 * (1.0 - t_cdf(t, dof))


def prcc(x_rows: list[tuple[int, ...]], y: list[float]) -> list[float]:
    """Partial rank correlation of y with each column of x (`prcc_with_dof`)."""
    return prcc_with_dof(x_rows, y)[0]


def prcc_with_dof(x_rows: list[tuple[int, ...]], y: list[float]) -> tuple[list[float], int]:
    """Partial rank correlation of y with each column of x (NaN for a constant column), and
    the degrees of freedom of its test (samples - varying columns - 1).  With fewer samples
    than columns + 3, the rank regression is underdetermined and plain Spearman
    correlations are returned instead (samples - 2 degrees of freedom)."""
    import numpy as np

    x = np.asarray(x_rows, dtype=float)
    yy = np.asarray(y, dtype=float)
    n, k = x.shape
    ok = np.isfinite(yy)
    x, yy = x[ok], yy[ok]
    n = len(yy)
    if n < 3:
        return [math.nan] * k, 0
    rx = np.column_stack([_ranks(x[:, j]) for j in range(k)])
    ry = _ranks(yy)
    varying = [j for j in range(k) if np.ptp(rx[:, j]) > 0]
    out = [math.nan] * k
    partial = n >= len(varying) + 3
    dof = n - len(varying) - 1 if partial else n - 2
    if np.ptp(ry) == 0:
        return out, dof
    for j in varying:
        if partial:
            others = np.column_stack([np.ones(n)] + [rx[:, i] for i in varying if i != j])
            res_x = rx[:, j] - others @ np.linalg.lstsq(others, rx[:, j], rcond=None)[0]
            res_y = ry - others @ np.linalg.lstsq(others, ry, rcond=None)[0]
        else:
            res_x, res_y = rx[:, j] - rx[:, j].mean(), ry - ry.mean()
        denom = math.sqrt(float(res_x @ res_x) * float(res_y @ res_y))
        out[j] = float(res_x @ res_y) / denom if denom > 0 else math.nan
    return out, dof


def _ranks(v: NDArray[np.float64]) -> NDArray[np.float64]:
    """Average ranks (ties share their mean rank)."""
    import numpy as np

    a = np.asarray(v, dtype=float)
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(1, len(a) + 1)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    out: NDArray[np.float64] = sums[inverse] / counts[inverse]
    return out


def answer(a: Analysis) -> list[str]:
    k = len(a.sample_costs)
    robust = [c for c in a.conclusions if c.share == 1.0]
    fragile = sorted((c for c in a.conclusions if c.share < 1.0), key=lambda c: c.share)
    head = (f"**Cost uncertainty.** Over {k} Latin hypercube samples of {len(a.costs)} "
            f"uncertain costs, {len(robust)} of {len(a.conclusions)} conclusions hold in "
            "every sample" + (". The others:" if fragile else "."))
    lines = [head]
    for c in fragile[:MAX_LISTED]:
        lines.append(f"- {_conclusion_text(c)} holds in {pct(c.share, sign=False)} of the "
                     f"cost space; it depends most on {_costs_text(c)}.")
    if len(fragile) > MAX_LISTED:
        lines.append(f"- ... and {len(fragile) - MAX_LISTED} more (see Cost uncertainty).")
    return lines


def section(a: Analysis) -> list[str]:
    study = a.summary.study
    u = study.uncertainty
    if u is None:
        raise ValueError(f"{study.path}: the study has no [uncertainty] table")
    k = len(a.sample_costs)
    lines = ["## Cost uncertainty", "",
             f"Every point ran at the nominal costs and at {k} samples of "
             f"{len(a.costs)} costs drawn by Latin hypercube over their plausible ranges "
             f"(`tdsim schema`, [costs]; seed {u.seed}), with the same replication seeds at "
             "every sample.  A conclusion is the nominal verdict read as a claim about the "
             "effect; \"holds\" counts samples whose estimated effect satisfies it, "
             "\"confirmed\" those whose own interval does.  The costs it depends on most are "
             "ranked by |PRCC| between the cost and the claim's margin (positive: a higher "
             "cost makes the claim safer); a cost is named only if its PRCC is significant "
             f"at {ALPHA:g} after Holm's correction over the costs.", ""]
    rows = []
    for c in a.conclusions:
        d = c.nominal
        rows.append([d.contrast.where, d.contrast.what, metric_label(d.metric).text,
                     f"{interval(d.diff)}: {CLAIM_WORDS[c.claim]}", pct(c.share, sign=False),
                     f"{sum(c.confirmed)} of {k}", _costs_text(c)])
    from tdsim.study.report_sections import table

    lines += table(["at", "difference", "metric", "nominal effect, claim", "holds in",
                    "confirmed", "depends most on (PRCC)"], rows)
    lines += ["", "Per-sample effects and costs: `uncertainty.csv`.", ""]
    return lines


def _conclusion_text(c: Conclusion) -> str:
    d = c.nominal
    where = "" if d.contrast.where == "(base scenario)" else f" at {d.contrast.where}"
    return (f"\"{d.contrast.what} in {metric_label(d.metric).text}{where}: "
            f"{CLAIM_WORDS[c.claim]}\"")


def _costs_text(c: Conclusion) -> str:
    top = c.top_costs()
    if not top:
        varies = any(not math.isnan(v) for v in c.prcc.values())
        return "no cost clearly (no PRCC significant)" if varies else (
            "no cost (the effect does not vary)")
    return ", ".join(f"`{name}` ({v:+.2f})".replace("-", MINUS) for name, v in top)


def write_csv(a: Analysis, path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["at", "contrast", "metric", "claim", "sample", "effect", "ci_low",
                    "ci_high", "min_effect", "holds", "confirmed"] + a.costs)
        for c in a.conclusions:
            d = c.nominal
            for i, s in enumerate(c.samples):
                w.writerow([d.contrast.where, d.contrast.what.replace(MINUS, "-"), d.metric,
                            c.claim, i + 1, s.diff.mean, s.diff.low, s.diff.high,
                            s.threshold, c.holds[i], c.confirmed[i]]
                           + list(a.sample_costs[i]))
    return path
