"""The answer in words: one sentence per comparison and metric (per metric when the study
compares nothing), generated from the estimates, so the report opens with what the study
found and a README can quote it.

A sentence gives the effect with its interval, the relative effect with its (Fieller)
interval, and the verdict against the study's minimum effect (`tdsim.study.summary.verdict`).
Over a sweep it gives the range of the effect, how many points reach each verdict, and where
along a single swept factor the sign of a material effect changes.
"""

from __future__ import annotations

from collections import Counter

from tdsim.study.design import DesignPoint, Study
from tdsim.study.fmt import MINUS, interval, relative
from tdsim.study.labels import metric_label
from tdsim.study.stats import Estimate
from tdsim.study.summary import Difference, Summary

VERDICT_TEXT = {
    "material": "a difference that matters (beyond the minimum effect, significant after "
                "Holm)",
    "detected": "a real difference that may be smaller than the minimum effect",
    "negligible": "no difference that matters (the interval lies within the minimum effect)",
    "inconclusive": "inconclusive (the interval is too wide to tell)",
}


def _direction(d: Difference) -> str:
    if d.verdict not in ("material", "detected"):
        return ""
    return "higher" if d.direction > 0 else "lower"


def _effect(d: Difference) -> str:
    text = interval(d.diff)
    rel = relative(d.relative)
    if not rel.startswith("n/a"):
        text += f", {rel} relative"
    return text


def _metric_phrase(name: str) -> str:
    label = metric_label(name)
    return f"**{label.text}**" + (f" [{label.unit}]" if label.unit else "")


def sentences(summary: Summary) -> list[str]:
    """The verdict sentences, in comparison then metric order (at the nominal costs)."""
    study = summary.study
    out: list[str] = []
    if not study.comparisons:
        for m in study.metrics:
            out.append(_mean_sentence(summary, m.name))
        return out
    by_index = {p.index: p for p in summary.points}
    for ci in range(len(study.comparisons)):
        for m in study.metrics:
            diffs = [d for d in summary.differences
                     if d.contrast.comparison == ci and d.metric == m.name
                     and summary.nominal(by_index[d.contrast.treatment[0]])]
            if not diffs:
                continue
            whats = sorted({d.contrast.what for d in diffs}, key=lambda w: [
                d.contrast.what for d in diffs].index(w))
            for what in whats:
                mine = [d for d in diffs if d.contrast.what == what]
                out.append(_difference_sentence(study, m.name, what, mine))
    return out


def _difference_sentence(study: Study, metric: str, what: str, diffs: list[Difference]
                         ) -> str:
    head = f"{_metric_phrase(metric)}, {_code_what(what)}: "
    if len(diffs) == 1:
        d = diffs[0]
        where = "" if d.contrast.where == "(base scenario)" else f" at {d.contrast.where}"
        direction = _direction(d)
        verdict = VERDICT_TEXT[d.verdict]
        if direction:
            verdict = f"{direction}: {verdict}"
        return f"{head}{_effect(d)}{where}; {verdict}."
    lo = min(diffs, key=lambda d: d.diff.mean)
    hi = max(diffs, key=lambda d: d.diff.mean)
    if lo.diff.mean == hi.diff.mean and lo.verdict == hi.verdict and all(
            d.diff.halfwidth == 0 for d in diffs):
        return (f"{head}{_effect(lo)} at every point; {VERDICT_TEXT[lo.verdict]}.")
    counts: Counter[str] = Counter(d.verdict for d in diffs)
    material = [d for d in diffs if d.verdict == "material"]
    up = sum(d.direction > 0 for d in material)
    parts = []
    if counts["material"]:
        parts.append(f"matters at {counts['material']} of {len(diffs)} "
                     f"({up} higher, {len(material) - up} lower)")
    for v, words in (("detected", "real but possibly below the minimum effect"),
                     ("negligible", "negligible"), ("inconclusive", "inconclusive")):
        if counts[v]:
            parts.append(f"{words} at {counts[v]}")
    text = (f"{head}from {_effect(lo)} at {lo.contrast.where} to {_effect(hi)} at "
            f"{hi.contrast.where}; {', '.join(parts)}")
    flips = _sign_changes(study, diffs)
    if flips:
        text += "; the sign changes " + "; ".join(flips)
    return text + "."


def _code_what(what: str) -> str:
    a, _, b = what.partition(f" {MINUS} ")
    return f"`{a}` {MINUS} `{b}`" if b else what


def _sign_changes(study: Study, diffs: list[Difference]) -> list[str]:
    """Between which consecutive points of a sweep a material difference changes sign
    (only when the differences lie along a single swept factor)."""
    factor_dims = [i for i, d in study.factor_dimensions
                   if not any(c.dimension == i for c in study.comparisons)]
    if len(factor_dims) != 1 or len({d.contrast.treatment[1] for d in diffs}) != 1:
        return []
    ordered = sorted(diffs, key=lambda d: d.contrast.treatment[0])
    out = []
    last = None
    for d in ordered:
        if d.verdict != "material":
            continue
        if last is not None and d.direction != last.direction:
            out.append(f"between {last.contrast.where} and {d.contrast.where}")
        last = d
    return out


def _mean_sentence(summary: Summary, metric: str) -> str:
    study = summary.study
    cells = [(p, s, summary.cells[(p.index, s, metric)]) for p in summary.points
             if summary.nominal(p) for s in study.strategies]
    cells = [c for c in cells if c[2].n > 0]
    head = f"{_metric_phrase(metric)}: "
    if not cells:
        return head + "no run reported it."

    def at(cell: tuple[DesignPoint, str, Estimate]) -> str:
        where = study.point_label(cell[0])
        return where if len(study.strategies) == 1 else f"{where} under `{cell[1]}`"

    if len(cells) == 1:
        return f"{head}{interval(cells[0][2], sign=False)} at {at(cells[0])}."
    lo = min(cells, key=lambda c: c[2].mean)
    hi = max(cells, key=lambda c: c[2].mean)
    return (f"{head}from {interval(lo[2], sign=False)} at {at(lo)} to "
            f"{interval(hi[2], sign=False)} at {at(hi)}.")
