"""Names people read: each metric's label and unit, derived from the model's declared metric
table (`tdsim.metrics`), whether a metric name exists at all, and one colour per strategy.

The study adds two metrics of its own to a run's: ``run.measured_s`` (``sim.measured_ns`` in
seconds) and ``violations`` (the sum of ``violations.<oracle>``).  Their labels come from the
families they are computed from, so there is still one table of labels.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from tdsim import metrics as model_metrics
from tdsim.schema import BUILTIN_STRATEGIES

DERIVED = ("run.measured_s", "violations")


@dataclass(frozen=True)
class Label:
    text: str   # "WRMSRs per TD / VM exit"
    unit: str   # "WRMSRs/exit"

    @property
    def axis(self) -> str:
        """An axis label: ``text [unit]``."""
        return f"{self.text} [{self.unit}]" if self.unit else self.text


def _segments_match(pattern: list[str], name: list[str]) -> bool:
    if len(pattern) != len(name):
        return False
    for p, n in zip(pattern, name, strict=True):
        if p.startswith("{") and p.endswith("}"):
            allowed = model_metrics.PLACEHOLDERS.get(p[1:-1])
            if n != "*" and allowed is not None and n not in allowed:
                return False
        elif n != "*" and n != p:
            return False
    return True


def family_of(term: str) -> model_metrics.MetricFamily | None:
    """The declared family of a model metric name, which may have ``*`` segments; study
    metrics (``run.measured_s``, ``violations``) answer with the family they derive from."""
    if term == "run.measured_s":
        return model_metrics.family("sim.measured_ns")
    if term == "violations":
        return model_metrics.family("violations.any")
    if "*" not in term:
        return model_metrics.family(term)
    segs = term.split(".")
    per_vcpu = len(segs) > 4 and segs[0] == "vm" and segs[2] == "vcpu"
    for fam in model_metrics.METRICS:
        pattern = fam.pattern.split(".")
        if _segments_match(pattern, segs):
            return fam
        if per_vcpu and fam.per_vcpu and _segments_match(pattern, segs[4:]):
            return fam
    return None


def unknown_metric(term: str) -> str | None:
    """Why `term` is not a metric tdsim reports (with the nearest declared name), or None."""
    if family_of(term) is not None:
        return None
    names = [f.pattern for f in model_metrics.METRICS] + list(DERIVED)
    close = difflib.get_close_matches(term, names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"{term!r} is not a metric tdsim reports{hint}; the declared names are in "
            "tdsim/metrics.py")


def _term_label(term: str) -> tuple[str, str]:
    """(label, unit) of one model metric name: the family's label, then the values of its
    placeholders (``cpu 4, kvm``), ``(all CPUs)`` for a ``*`` sum, ``of td0 vCPU 1`` for a
    per-vCPU name."""
    if term == "run.measured_s":
        fam = model_metrics.family("sim.measured_ns")
        return (fam.label if fam else "measured time"), "s"
    if term == "violations":
        return "violations", "violations"
    fam = family_of(term)
    if fam is None:
        return term, ""
    segs = term.split(".")
    owner = ""
    pattern = fam.pattern.split(".")
    if len(segs) > len(pattern):  # vm.<vm>.vcpu.<i>.<metric>
        owner = f" of {segs[1]} vCPU {segs[3]}" if "*" not in segs[:4] else " (all vCPUs)"
        segs = segs[4:]
    details, summed = [], []
    for s, p in zip(segs, pattern, strict=True):
        if not p.startswith("{"):
            continue
        ph = p[1:-1]
        if s == "*":
            summed.append(ph.upper() if len(ph) <= 3 else ph)
        elif ph in model_metrics.PLACEHOLDERS or f"by {ph}" in fam.label:
            details.append(s)
        else:
            details.append(f"{ph} {s}")
    text = fam.label + (f": {', '.join(details)}" if details else "")
    if summed:
        text += f" (all {', '.join(o + 's' for o in summed)})"
    return text + owner, fam.unit


def _singular(unit: str) -> str:
    return unit[:-1] if unit.endswith("s") and len(unit) > 2 else unit


def metric_label(name: str) -> Label:
    """The human label and unit of a study metric: a model metric, a ``*`` sum, or a ratio
    ``a/b`` (``wrmsr.total/exits`` -> "WRMSRs per TD / VM exit" [WRMSRs/exit])."""
    if "/" not in name:
        text, unit = _term_label(name.strip())
        return Label(text, unit)
    num, den = (p.strip() for p in name.split("/", 1))
    n_text, n_unit = _term_label(num)
    try:
        scale = float(den)
    except ValueError:
        pass
    else:
        return Label(f"{n_text} / {scale:g}", n_unit)
    if den == "run.measured_s":
        return Label(f"{n_text} per second", f"{n_unit}/s" if n_unit else "1/s")
    d_text, d_unit = _term_label(den)
    if n_unit and n_unit == d_unit:
        return Label(f"{n_text} per {_singular_phrase(d_text)}", "share")
    unit = f"{n_unit or '1'}/{_singular(d_unit)}" if d_unit else n_unit
    return Label(f"{n_text} per {_singular_phrase(d_text)}", unit)


def _singular_phrase(text: str) -> str:
    """"TD / VM exits" -> "TD / VM exit", for "per ..." phrases: the last word of the label
    proper (before any ``: detail``, ``(all ...)`` or ``of ...``)."""
    cut = min((i for i in (text.find(":"), text.find(" ("), text.find(" of "))
               if i >= 0), default=len(text))
    head, _, last = text[:cut].rpartition(" ")
    return f"{head} {_singular(last)}".strip() + text[cut:]


# One colour per strategy in every figure: the built-ins keep theirs, any other strategy gets
# one of the remaining colours by a stable hash of its name.
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")
STRATEGY_COLOURS = dict(zip(BUILTIN_STRATEGIES, _PALETTE, strict=False))


def strategy_colour(strategy: str) -> str:
    if strategy in STRATEGY_COLOURS:
        return STRATEGY_COLOURS[strategy]
    import hashlib

    spare = _PALETTE[len(STRATEGY_COLOURS):]
    digest = hashlib.sha256(strategy.encode()).digest()
    return spare[digest[0] % len(spare)]
