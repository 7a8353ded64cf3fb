"""Study files: what to vary, what to compare, how many replications, what to report.

A study file is TOML (studies/README.md and docs/studies.md describe every key)::

    question = "How many more WRMSRs does v6.16 cost than current as host contention grows?"
    scenario = "../scenarios/two_vcpus.toml"   # relative to the study file
    strategies = ["current", "v6.16", "eager"] # sets kvm.host_state; the first is the baseline
    metrics = ["host_state_reload", "wrmsr.total/exits", "cpu.*.ns.kvm/exits"]
    compare = "strategy"                       # or a factor: each level - its first level
    min_effect = 0.01                          # differences under 1% of the baseline do not matter
    ratio = "ratio_of_means"                   # or "mean_of_ratios" (for metrics "a/b")
    seed = 1                                   # replication r runs with a seed hashed from (1, r)

    [factors]                                  # full product of the levels, by dotted key
    "host.tasks" = [0, 2, 4, 8]

    [replications]
    count = 10                                 # or the two-stage sequential procedure:
    # target_rel_halfwidth = 0.05, min = 10, max = 50, metrics = ["wrmsr.total/exits"]

Everything is checked here, before any run: a bad study file yields one `StudyError` line
``<file>: <key path>: <message>``, including metric names the model does not declare
(`tdsim.metrics`) and strategies it does not know.  Whether each factor key and level is
accepted by the scenario is checked by `tdsim.study.checks`, which resolves every level.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any, Literal, cast

from tdsim.study.design import (
    Comparison,
    DesignPoint,
    Dimension,
    Metric,
    MinEffect,
    Replications,
    SeriesSpec,
    Study,
    StudyError,
    Uncertainty,
    point_key,
    replication_seed,
)
from tdsim.study.spec_analyses import (
    cost_dimension,
    parse_compare,
    parse_min_effect,
    parse_series,
    parse_uncertainty,
)
from tdsim.study.spec_fields import Errors, check_strategy, get, parse_metric, string_list
from tdsim.study.stats import MIN_FIRST_STAGE

__all__ = [
    "Comparison", "DesignPoint", "Dimension", "Metric", "MinEffect", "Replications",
    "SeriesSpec", "Study", "StudyError", "Uncertainty", "load_study", "point_key",
    "replication_seed", "study_from_dict",
]

# Scenario keys the study itself sets: strategies choose kvm.host_state, replications choose
# sim.seed and warmup_us sets sim.warmup_us.  A factor or override on them would fight the
# study, so they are rejected.
RESERVED_KEYS = ("kvm.host_state", "sim.seed", "sim.warmup_us")

TOP_LEVEL_KEYS = (
    "question", "scenario", "strategies", "baseline", "metrics", "confidence", "seed",
    "warmup_us", "overrides", "factors", "lockstep", "replications", "compare", "min_effect",
    "ratio", "series", "uncertainty",
)
RANGE_KEYS = frozenset({"start", "stop", "step", "num"})
RATIO_ESTIMATORS = ("ratio_of_means", "mean_of_ratios")


# ----------------------------------------------------------------------------------------
# Loading and validation


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; raise `StudyError` on any problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise StudyError(path, "", "no such file") from None
    except OSError as e:
        raise StudyError(path, "", f"cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise StudyError(path, "", f"not valid TOML: {e}") from None
    return study_from_dict(raw, path)


def study_from_dict(raw: dict[str, Any], path: str | Path) -> Study:
    """Validate a parsed study; `path` names the file in errors and anchors `scenario`."""
    path = Path(path)
    err = Errors(path)
    for k in raw:
        if k not in TOP_LEVEL_KEYS:
            err(k, f"unknown key (allowed: {', '.join(TOP_LEVEL_KEYS)})")

    question = get(raw, "question", str, err, required=True)
    if not question.strip():
        err("question", "must not be empty: a study answers a question")

    scenario_rel = get(raw, "scenario", str, err, required=True)
    scenario_path = (path.parent / scenario_rel).resolve()
    if not scenario_path.is_file():
        err("scenario", f"no such file: {scenario_path}")

    strategies = string_list(raw, "strategies", err, default=["current"])
    if len(set(strategies)) != len(strategies):
        err("strategies", "lists a strategy twice")
    for i, name in enumerate(strategies):
        check_strategy(name, f"strategies[{i}]", err)
    baseline = get(raw, "baseline", str, err, default=strategies[0])
    if baseline not in strategies:
        err("baseline", f"{baseline!r} is not one of the strategies")

    metric_names = string_list(raw, "metrics", err)
    metrics = tuple(parse_metric(n, f"metrics[{i}]", err) for i, n in enumerate(metric_names))
    if len({m.name for m in metrics}) != len(metrics):
        err("metrics", "lists a metric twice")

    confidence = float(get(raw, "confidence", (int, float), err, default=0.95))
    if not 0 < confidence < 1:
        err("confidence", "must be between 0 and 1 (exclusive)")
    seed = get(raw, "seed", int, err, default=1)
    if seed < 0:
        err("seed", "must be >= 0")
    warmup = get(raw, "warmup_us", (int, float), err, default=None)
    if warmup is not None and warmup < 0:
        err("warmup_us", "must be >= 0")
    ratio = get(raw, "ratio", str, err, default="ratio_of_means")
    if ratio not in RATIO_ESTIMATORS:
        err("ratio", f"must be one of {', '.join(RATIO_ESTIMATORS)}, got {ratio!r}")

    overrides = _flatten(get(raw, "overrides", dict, err, default={}))
    for k, v in overrides.items():
        _check_settable(k, f"overrides.{k}", err)
        if isinstance(v, dict):
            err(f"overrides.{k}", "must be a value, not a table")

    dimensions = _factors(get(raw, "factors", dict, err, default={}), err)
    lockstep = get(raw, "lockstep", list, err, default=[])
    for i, group in enumerate(lockstep):
        dimensions.append(_lockstep(group, f"lockstep[{i}]", err))
    uncertainty = None
    if "uncertainty" in raw:
        uncertainty = parse_uncertainty(get(raw, "uncertainty", dict, err), seed, err)
        dimensions.append(cost_dimension(uncertainty))
    seen: dict[str, str] = {k: "overrides" for k in overrides}
    for dim in dimensions:
        for k in dim.keys:
            if k in seen:
                err(dim.key_path if dim.role == "costs" else k, f"{k} set twice (also in "
                    f"{seen[k]})")
            seen[k] = dim.key_path

    names = {m.name for m in metrics}
    replications = _replications(get(raw, "replications", dict, err, required=True), names,
                                 err)
    comparisons = parse_compare(raw, strategies, dimensions, err)
    min_effects, default_min = parse_min_effect(raw, names, err)
    series = parse_series(raw, err)
    return Study(
        path=path, question=question.strip(), scenario_path=scenario_path,
        strategies=tuple(strategies), baseline=baseline, metrics=metrics,
        confidence=confidence, seed=seed,
        warmup_us=None if warmup is None else float(warmup),
        overrides=tuple(overrides.items()), dimensions=tuple(dimensions),
        replications=replications, comparisons=comparisons,
        ratio_estimator=cast(Literal["ratio_of_means", "mean_of_ratios"], ratio),
        min_effects=min_effects, default_min_effect=default_min, series=series,
        uncertainty=uncertainty,
    )


def _check_settable(key: str, key_path: str, err: Errors) -> None:
    if key in RESERVED_KEYS:
        why = {"kvm.host_state": "use `strategies`", "sim.seed": "use `seed` (replication r "
               "runs with a seed hashed from seed and r)",
               "sim.warmup_us": "use `warmup_us`"}[key]
        err(key_path, f"{key} is set by the study itself: {why}")


def _flatten(table: dict[str, Any], *, keep_ranges: bool = False) -> dict[str, Any]:
    """{"a": {"b": 1}, "c.d": 2} -> {"a.b": 1, "c.d": 2}; range tables are kept as leaves."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: dict[str, Any]) -> None:
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict) and v and not (keep_ranges and set(v) <= RANGE_KEYS):
                walk(key, v)
            else:
                out[key] = v

    walk("", table)
    return out


def _factors(table: dict[str, Any], err: Errors) -> list[Dimension]:
    dims = []
    for key, spec in _flatten(table, keep_ranges=True).items():
        kp = f"factors.{key}"
        _check_settable(key, kp, err)
        levels = _levels(spec, kp, err)
        dims.append(Dimension((key,), tuple((v,) for v in levels), key_path=kp))
    return dims


def _lockstep(group: Any, where: str, err: Errors) -> Dimension:
    if not isinstance(group, dict) or not group:
        err(where, "must be a non-empty table of key = list")
    group = dict(group)
    name = get(group, "name", str, err, where=f"{where}.") if "name" in group else None
    labels = get(group, "labels", list, err, where=f"{where}.") if "labels" in group else None
    group.pop("name", None)
    group.pop("labels", None)
    flat = _flatten(group, keep_ranges=True)
    if len(flat) < 2:
        err(where, "a lockstep group needs at least two keys (use [factors] for one)")
    columns = {}
    for key, spec in flat.items():
        _check_settable(key, f"{where}.{key}", err)
        columns[key] = _levels(spec, f"{where}.{key}", err, unique=False)
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) != 1:
        err(where, "lists must have equal lengths, got "
            + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
    levels = tuple(zip(*columns.values(), strict=True))
    if labels is not None:
        if len(labels) != len(levels) or not all(isinstance(x, str) and x for x in labels):
            err(f"{where}.labels", f"must be {len(levels)} non-empty strings, one per level")
        if len(set(labels)) != len(labels):
            err(f"{where}.labels", "lists a label twice")
        labels = tuple(labels)
    if len(set(levels)) != len(levels):
        err(where, "two levels set the same values")
    return Dimension(tuple(columns), levels, name, labels, key_path=where)


def _levels(spec: Any, kp: str, err: Errors, *, unique: bool = True) -> list[Any]:
    if isinstance(spec, dict):
        levels: list[Any] = _range(spec, kp, err)
    elif isinstance(spec, list):
        levels = spec
    else:
        err(kp, f"must be a list of levels or a range table {{start, stop, step|num}}, "
            f"got {spec!r}")
    if not levels:
        err(kp, "must have at least one level")
    for i, v in enumerate(levels):
        if isinstance(v, (dict, list)):
            err(f"{kp}[{i}]", "a level must be a value, not a table or list")
    if unique and len({json.dumps(v, sort_keys=True) for v in levels}) != len(levels):
        err(kp, "lists a level twice")
    return list(levels)


def _range(spec: dict[str, Any], kp: str, err: Errors) -> list[Any]:
    """{start, stop, step}: start, start+step, ... up to and including stop;
    {start, stop, num}: num evenly spaced levels from start to stop inclusive."""
    unknown = set(spec) - RANGE_KEYS
    if unknown:
        err(f"{kp}.{sorted(unknown)[0]}", "unknown range key (use start, stop and step or num)")
    for k in ("start", "stop"):
        if k not in spec:
            err(f"{kp}.{k}", "missing")
    if ("step" in spec) == ("num" in spec):
        err(kp, "a range needs exactly one of step or num")
    for k, v in spec.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            err(f"{kp}.{k}", f"must be a number, got {v!r}")
    start, stop = spec["start"], spec["stop"]
    if "num" in spec:
        num = spec["num"]
        if not isinstance(num, int) or num < 1:
            err(f"{kp}.num", "must be an integer >= 1")
        if num == 1:
            return [start]
        span = stop - start
        if all(isinstance(x, int) for x in (start, stop)) and span % (num - 1) == 0:
            return [start + i * (span // (num - 1)) for i in range(num)]
        return [_clean(start + span * i / (num - 1)) for i in range(num)]
    step = spec["step"]
    if step == 0 or (stop - start) * step < 0:
        err(f"{kp}.step", f"a step of {step} never goes from {start} to {stop}")
    count = math.floor((stop - start) / step * (1 + 1e-9) + 1e-9) + 1
    if count > 10_000:
        err(kp, f"{count} levels: too many")
    if all(isinstance(x, int) for x in (start, stop, step)):
        return [start + i * step for i in range(count)]
    return [_clean(start + i * step) for i in range(count)]


def _clean(x: float) -> float:
    """0.30000000000000004 -> 0.3: range levels are shown, hashed and compared."""
    return float(f"{x:.12g}")


def _replications(table: dict[str, Any], metric_names: set[str], err: Errors
                  ) -> Replications:
    w = "replications."
    allowed = ("count", "target_rel_halfwidth", "min", "max", "metrics")
    for k in table:
        if k not in allowed:
            err(w + k, f"unknown key (allowed: {', '.join(allowed)})")
    if "count" in table:
        extra = [k for k in table if k != "count"]
        if extra:
            err(w + extra[0], "not allowed with count (a fixed count has no stopping rule)")
        count = get(table, "count", int, err, where=w)
        if count < 1:
            err(w + "count", "must be >= 1")
        return Replications(count=count)
    if "target_rel_halfwidth" not in table:
        err("replications", "needs count, or target_rel_halfwidth with min and max")
    target = float(get(table, "target_rel_halfwidth", (int, float), err, where=w))
    if not 0 < target < 1:
        err(w + "target_rel_halfwidth", "must be between 0 and 1 (a fraction of the mean)")
    lo = get(table, "min", int, err, where=w, default=MIN_FIRST_STAGE)
    hi = get(table, "max", int, err, where=w, required=True)
    if lo < MIN_FIRST_STAGE:
        err(w + "min", f"must be >= {MIN_FIRST_STAGE}: the first stage estimates the spread "
            "that fixes the final count, and a smaller one makes the intervals cover less "
            "than they claim (docs/studies.md)")
    if hi < lo:
        err(w + "max", f"must be >= min ({lo})")
    names = table.get("metrics", sorted(metric_names))
    if not isinstance(names, list) or not names:
        err(w + "metrics", "must be a non-empty list of reported metrics")
    for i, n in enumerate(names):
        if n not in metric_names:
            err(f"{w}metrics[{i}]", f"{n!r} is not one of the reported metrics")
    return Replications(target_rel_halfwidth=target, min=lo, max=hi, metrics=tuple(names))


