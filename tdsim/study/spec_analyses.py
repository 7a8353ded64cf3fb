"""Study keys that shape the analysis rather than the runs: ``compare`` (which differences
the study asks about), ``min_effect`` (the smallest one that matters), ``series`` (per-window
time series for the warm-up) and ``[uncertainty]`` (cost samples)."""

from __future__ import annotations

from typing import Any

from tdsim.study.design import (
    DEFAULT_MIN_EFFECT,
    Comparison,
    Dimension,
    MinEffect,
    SeriesSpec,
    Uncertainty,
)
from tdsim.study.spec_fields import Errors, get, parse_metric, string_list


def parse_compare(raw: dict[str, Any], strategies: list[str], dims: list[Dimension],
                 err: Errors) -> tuple[Comparison, ...]:
    """``compare``: "strategy", a factor (its key or lockstep name), a table {factor,
    baseline}, or a list of these.  Default: the strategies, when there are several."""
    if "compare" not in raw:
        return (Comparison(),) if len(strategies) > 1 else ()
    spec = raw["compare"]
    items = spec if isinstance(spec, list) else [spec]
    if not items:
        err("compare", "must not be empty")
    out = []
    for i, item in enumerate(items):
        kp = f"compare[{i}]" if isinstance(spec, list) else "compare"
        out.append(_comparison(item, kp, strategies, dims, err))
    if len(set(out)) != len(out):
        err("compare", "names a comparison twice")
    return tuple(out)


def _comparison(item: Any, kp: str, strategies: list[str], dims: list[Dimension],
                err: Errors) -> Comparison:
    baseline: Any = None
    if isinstance(item, dict):
        for k in item:
            if k not in ("factor", "baseline"):
                err(f"{kp}.{k}", "unknown key (allowed: factor, baseline)")
        name = get(item, "factor", str, err, required=True, where=f"{kp}.")
        baseline = item.get("baseline")
        kp_base = f"{kp}.baseline"
    elif isinstance(item, str):
        name, kp_base = item, kp
    else:
        err(kp, f"must be \"strategy\", a factor key or a table {{factor, baseline}}, "
            f"got {item!r}")
    if name == "strategy":
        if len(strategies) < 2:
            err(kp, "compares strategies, but the study lists only one")
        if baseline is not None:
            err(kp_base, "the strategies' baseline is set by `baseline`")
        return Comparison()
    matches = [i for i, d in enumerate(dims)
               if d.role == "factor" and (name in d.keys or name == d.name)]
    if not matches:
        names = [d.name or d.keys[0] for d in dims if d.role == "factor"]
        err(kp, f"{name!r} is not a factor of this study (factors: "
            f"{', '.join(names) or 'none'})")
    d_i = matches[0]
    dim = dims[d_i]
    if len(dim.levels) < 2:
        err(kp, f"{name!r} has one level: nothing to compare")
    level = 0
    if baseline is not None:
        found = [i for i in range(len(dim.levels))
                 if baseline == dim.level_label(i) or (len(dim.keys) == 1
                                                        and baseline == dim.levels[i][0])]
        if not found:
            err(kp_base, f"{baseline!r} is not a level of {dim.label}")
        level = found[0]
    return Comparison(d_i, level)


def parse_min_effect(raw: dict[str, Any], names: set[str], err: Errors
                 ) -> tuple[tuple[tuple[str, MinEffect], ...], MinEffect]:
    """``min_effect = 0.02`` (a fraction of the baseline mean, every metric), or a table with
    ``default`` and per-metric entries: a fraction, or ``{absolute = x}`` in the metric's
    unit, or ``{relative = f}``."""
    if "min_effect" not in raw:
        return (), DEFAULT_MIN_EFFECT
    spec = raw["min_effect"]
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return (), _one_min_effect(spec, "min_effect", err)
    if not isinstance(spec, dict):
        err("min_effect", f"must be a number (a fraction of the baseline mean) or a table, "
            f"got {spec!r}")
    default = DEFAULT_MIN_EFFECT
    per: list[tuple[str, MinEffect]] = []
    for k, v in spec.items():
        kp = f"min_effect.{k}"
        if k == "default":
            default = _one_min_effect(v, kp, err)
        elif k not in names:
            err(kp, f"{k!r} is not one of the reported metrics")
        else:
            per.append((k, _one_min_effect(v, kp, err)))
    return tuple(per), default


def _one_min_effect(v: Any, kp: str, err: Errors) -> MinEffect:
    if isinstance(v, dict):
        if len(v) != 1 or next(iter(v)) not in ("absolute", "relative"):
            err(kp, "must be {absolute = x} or {relative = fraction}")
        (kind, x), = v.items()
        kp = f"{kp}.{kind}"
    else:
        kind, x = "relative", v
    if not isinstance(x, (int, float)) or isinstance(x, bool) or x < 0:
        err(kp, f"must be a number >= 0, got {x!r}")
    if kind == "relative":
        if x >= 1:
            err(kp, f"{x!r}: a fraction of the baseline mean must be below 1 (write 0.05 "
                "for 5%)")
        return MinEffect(relative=float(x))
    return MinEffect(absolute=float(x))


def parse_series(raw: dict[str, Any], err: Errors) -> SeriesSpec:
    if "series" not in raw:
        return SeriesSpec()
    table = get(raw, "series", dict, err)
    for k in table:
        if k not in ("metrics", "window_us"):
            err(f"series.{k}", "unknown key (allowed: metrics, window_us)")
    names = string_list(table, "metrics", err, where="series.")
    metrics = [parse_metric(n, f"series.metrics[{i}]", err) for i, n in enumerate(names)]
    window = get(table, "window_us", (int, float), err, required=True, where="series.")
    if not window > 0:
        err("series.window_us", "must be > 0")
    return SeriesSpec(tuple(m.name for m in metrics), float(window))


def parse_uncertainty(table: dict[str, Any], seed: int, err: Errors) -> Uncertainty:
    """``[uncertainty]``: which costs to vary (``costs = "uncertain"``, the default, or a
    list of cost names), how many Latin hypercube `samples`, and their `seed`."""
    from tdsim.study.costs import cost_ranges, uncertain_costs

    w = "uncertainty."
    for k in table:
        if k not in ("costs", "samples", "seed"):
            err(w + k, "unknown key (allowed: costs, samples, seed)")
    ranges = cost_ranges()
    spec = table.get("costs", "uncertain")
    if spec == "uncertain":
        names = uncertain_costs()
    elif isinstance(spec, list) and spec:
        names = []
        for i, n in enumerate(spec):
            if n not in ranges:
                err(f"{w}costs[{i}]", f"{n!r} is not a cost (see `tdsim schema`, [costs])")
            if ranges[n].low == ranges[n].high:
                err(f"{w}costs[{i}]", f"{n!r} has no range to sample")
            names.append(n)
        if len(set(names)) != len(names):
            err(w + "costs", "lists a cost twice")
    else:
        err(w + "costs", f"must be \"uncertain\" or a non-empty list of cost names, got "
            f"{spec!r}")
    samples = get(table, "samples", int, err, required=True, where=w)
    if samples < 2:
        err(w + "samples", "must be >= 2")
    lhs_seed = get(table, "seed", int, err, default=seed, where=w)
    return Uncertainty(tuple(names), tuple((ranges[n].low, ranges[n].high) for n in names),
                       samples, lhs_seed)


def cost_dimension(u: Uncertainty) -> Dimension:
    """The cost samples as one lockstep dimension over ``costs.<name>``: level 0 is the
    nominal costs (the schema's defaults), levels 1..K the Latin hypercube."""
    from tdsim.study.costs import cost_ranges, latin_hypercube

    ranges = cost_ranges()
    nominal = tuple(ranges[n].default for n in u.costs)
    rows = [nominal] + latin_hypercube(list(u.ranges), u.samples, u.seed)
    labels = ("nominal",) + tuple(f"sample {k}" for k in range(1, u.samples + 1))
    return Dimension(tuple(f"costs.{n}" for n in u.costs), tuple(rows), "cost sample",
                     labels, key_path="uncertainty", role="costs")
