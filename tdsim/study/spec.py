"""Study files: what to vary, what to compare, how many replications, what to report.

A study file is TOML::

    question = "How many more WRMSRs does v6.16 cost than current as host contention grows?"
    scenario = "../scenarios/two_vcpus.toml"   # relative to the study file
    strategies = ["current", "v6.16", "eager"] # sets kvm.host_state; the first is the baseline
    metrics = ["host_state_reload", "wrmsr.total", "wrmsr.total/exits"]
    confidence = 0.95
    seed = 1                                   # replication r runs with sim.seed = seed + r
    warmup_us = 1000.0                         # events before this are not counted

    [overrides]                                # fixed for the whole study
    "sim.duration_us" = 20000

    [factors]                                  # full product of the levels, by dotted key
    "host.tasks" = [0, 2, 4, 8]
    "vm.0.workload.compute_us" = { start = 10, stop = 50, step = 10 }  # stop is included

    [[lockstep]]                               # these lists vary together (one dimension)
    "vm.0.workload.mix.io" = [0.0, 0.5, 1.0]
    "vm.0.workload.mix.cpuid" = [1.0, 0.5, 0.0]
    name = "io share"                          # optional: the dimension's name in tables
    labels = ["none", "half", "all"]           # optional: a name per level (categorical)

    [replications]
    count = 10                                 # or the sequential rule:
    # target_rel_halfwidth = 0.05, min = 5, max = 50, metrics = ["wrmsr.total"]

Keys may be written quoted (``"host.tasks" = [...]``) or as TOML dotted keys
(``host.tasks = [...]``); both name the same scenario key.  A metric may be a ratio of two
metrics or of a metric and a number (``"wrmsr.total/exits"``); ratios are taken per run and
then averaged.

Everything is checked here, before any run: a bad study file yields one `StudyError` line
``<file>: <key path>: <message>``.  Whether each factor key exists in the scenario is checked
by resolving every design point (`tdsim.study.runner.resolve_points`), which raises the
scenario loader's own error.
"""

from __future__ import annotations

import itertools
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Scenario keys the study itself sets: strategies choose kvm.host_state, replications choose
# sim.seed and warmup_us sets sim.warmup_us.  A factor or override on them would fight the
# study, so they are rejected.
RESERVED_KEYS = ("kvm.host_state", "sim.seed", "sim.warmup_us")

TOP_LEVEL_KEYS = (
    "question", "scenario", "strategies", "baseline", "metrics", "confidence", "seed",
    "warmup_us", "overrides", "factors", "lockstep", "replications",
)
RANGE_KEYS = frozenset({"start", "stop", "step", "num"})


class StudyError(ValueError):
    """Bad study input; the message is one line: ``<file>: <key path>: <message>``."""

    def __init__(self, file: str | Path, key_path: str, message: str) -> None:
        self.file = str(file)
        self.key_path = key_path
        self.message = message
        super().__init__(f"{file}: {key_path}: {message}" if key_path else f"{file}: {message}")


@dataclass(frozen=True)
class Dimension:
    """One swept axis: a single factor, or a lockstep group of keys that move together."""

    keys: tuple[str, ...]
    levels: tuple[tuple[Any, ...], ...]  # one tuple per level, aligned with `keys`
    name: str | None = None               # lockstep groups may be named ...
    labels: tuple[str, ...] | None = None  # ... and their levels too

    @property
    def label(self) -> str:
        return self.name or " | ".join(self.keys)

    @property
    def slug(self) -> str:
        if self.name:
            return "".join(c if c.isalnum() else "_" for c in self.name)
        return "__".join(k.replace(".", "_") for k in self.keys)

    def level_label(self, i: int) -> str:
        if self.labels:
            return self.labels[i]
        return " | ".join(_fmt(v) for v in self.levels[i])

    @property
    def numeric(self) -> bool:
        """True when the first key's levels are all numbers and the levels carry no labels
        (plotted on a numeric axis)."""
        return self.labels is None and all(
            isinstance(lv[0], (int, float)) and not isinstance(lv[0], bool)
            for lv in self.levels)


@dataclass(frozen=True)
class DesignPoint:
    """One combination of factor levels."""

    index: int
    levels: tuple[int, ...]              # level index per dimension
    values: tuple[tuple[str, Any], ...]  # (dotted key, value) in dimension order

    @property
    def key(self) -> str:
        """Canonical identity of the point (stable across processes and study edits)."""
        return point_key(dict(self.values))


def point_key(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Metric:
    """A reported metric: a model metric name, or a ratio ``a/b`` computed per run."""

    name: str
    numerator: str
    denominator: str | float | None = None

    def value(self, metrics: dict[str, Any], absent: float | None = None) -> float | None:
        """This metric of one run; a needed model metric that is not there counts as
        `absent` (None: the whole value is None)."""
        num = metrics.get(self.numerator, absent)
        if num is None:
            return None
        if self.denominator is None:
            return float(num)
        den = (self.denominator if isinstance(self.denominator, float)
               else metrics.get(self.denominator, absent))
        if den is None:
            return None
        return float(num) / den if den != 0 else math.nan

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(n for n in (self.numerator, self.denominator) if isinstance(n, str))


@dataclass(frozen=True)
class Replications:
    """A fixed count, or: add replications until every `metrics` CI half-width is below
    `target_rel_halfwidth` x |mean| for every strategy at the point, between `min` and `max`."""

    count: int | None = None
    target_rel_halfwidth: float | None = None
    min: int = 0
    max: int = 0
    metrics: tuple[str, ...] = ()

    @property
    def sequential(self) -> bool:
        return self.count is None

    @property
    def first_batch(self) -> int:
        return self.min if self.sequential else self.count

    def describe(self) -> str:
        if not self.sequential:
            return f"{self.count} per design point and strategy"
        return (f"sequential: until the {_pct(self.target_rel_halfwidth)} relative CI "
                f"half-width target holds for {', '.join(self.metrics)} "
                f"(min {self.min}, max {self.max})")


@dataclass(frozen=True)
class Study:
    """A validated study file."""

    path: Path
    question: str
    scenario_path: Path
    strategies: tuple[str, ...]
    baseline: str
    metrics: tuple[Metric, ...]
    confidence: float
    seed: int
    warmup_us: float | None
    overrides: tuple[tuple[str, Any], ...]
    dimensions: tuple[Dimension, ...]
    replications: Replications

    @property
    def name(self) -> str:
        return self.path.stem

    def points(self) -> list[DesignPoint]:
        """The design points: the product of all dimensions, first dimension slowest."""
        points = []
        ranges = [range(len(d.levels)) for d in self.dimensions]
        for i, combo in enumerate(itertools.product(*ranges)):
            values: list[tuple[str, Any]] = []
            for dim, lv in zip(self.dimensions, combo, strict=True):
                values.extend(zip(dim.keys, dim.levels[lv], strict=True))
            points.append(DesignPoint(i, tuple(combo), tuple(values)))
        return points

    def seed_of(self, replication: int) -> int:
        """Replication r of every point and strategy runs with the same seed (common random
        numbers), so strategies see identical guest behaviour and differences pair up."""
        return self.seed + replication

    def point_label(self, point: DesignPoint) -> str:
        """``dim=level, ...`` using dimension names and level labels where given."""
        parts = [f"{d.label}={d.level_label(lv)}"
                 for d, lv in zip(self.dimensions, point.levels, strict=True)]
        return ", ".join(parts) or "(base scenario)"

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)


# ----------------------------------------------------------------------------------------
# Loading and validation


def load_study(path: str | Path) -> Study:
    """Read and validate a study file; raise `StudyError` on any problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise StudyError(path, "", "no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise StudyError(path, "", f"not valid TOML: {e}") from None
    return study_from_dict(raw, path)


def study_from_dict(raw: dict[str, Any], path: str | Path) -> Study:
    """Validate a parsed study; `path` names the file in errors and anchors `scenario`."""
    path = Path(path)
    err = _Errors(path)
    for k in raw:
        if k not in TOP_LEVEL_KEYS:
            err(k, f"unknown key (allowed: {', '.join(TOP_LEVEL_KEYS)})")

    question = _get(raw, "question", str, err, required=True)
    if not question.strip():
        err("question", "must not be empty: a study answers a question")

    scenario_rel = _get(raw, "scenario", str, err, required=True)
    scenario_path = (path.parent / scenario_rel).resolve()
    if not scenario_path.is_file():
        err("scenario", f"no such file: {scenario_path}")

    strategies = _string_list(raw, "strategies", err, default=["current"])
    if len(set(strategies)) != len(strategies):
        err("strategies", "lists a strategy twice")
    baseline = _get(raw, "baseline", str, err, default=strategies[0])
    if baseline not in strategies:
        err("baseline", f"{baseline!r} is not one of the strategies")

    metric_names = _string_list(raw, "metrics", err)
    metrics = tuple(_parse_metric(n, f"metrics[{i}]", err) for i, n in enumerate(metric_names))
    if len({m.name for m in metrics}) != len(metrics):
        err("metrics", "lists a metric twice")

    confidence = float(_get(raw, "confidence", (int, float), err, default=0.95))
    if not 0 < confidence < 1:
        err("confidence", "must be between 0 and 1 (exclusive)")
    seed = _get(raw, "seed", int, err, default=1)
    if seed < 0:
        err("seed", "must be >= 0")
    warmup = _get(raw, "warmup_us", (int, float), err, default=None)
    if warmup is not None and warmup < 0:
        err("warmup_us", "must be >= 0")

    overrides = _flatten(_get(raw, "overrides", dict, err, default={}), "overrides", err)
    for k, v in overrides.items():
        _check_settable(k, f"overrides.{k}", err)
        if isinstance(v, dict):
            err(f"overrides.{k}", "must be a value, not a table")

    dimensions = _factors(_get(raw, "factors", dict, err, default={}), err)
    lockstep = _get(raw, "lockstep", list, err, default=[])
    for i, group in enumerate(lockstep):
        dimensions.append(_lockstep(group, f"lockstep[{i}]", err))
    seen: dict[str, str] = {k: "overrides" for k in overrides}
    for dim in dimensions:
        for k in dim.keys:
            if k in seen:
                err(k, f"set twice (also in {seen[k]})")
            seen[k] = "factors/lockstep"

    replications = _replications(_get(raw, "replications", dict, err, required=True),
                                 {m.name for m in metrics}, err)
    return Study(
        path=path, question=question.strip(), scenario_path=scenario_path,
        strategies=tuple(strategies), baseline=baseline, metrics=metrics,
        confidence=confidence, seed=seed,
        warmup_us=None if warmup is None else float(warmup),
        overrides=tuple(overrides.items()), dimensions=tuple(dimensions),
        replications=replications,
    )


class _Errors:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, key_path: str, message: str) -> None:
        raise StudyError(self.path, key_path, message)


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a table", bool: "a boolean"}
    if isinstance(t, tuple):
        return "a number" if set(t) == {int, float} else " or ".join(names[x] for x in t)
    return names[t]


def _get(raw: dict, key: str, t, err: _Errors, *, required: bool = False, default=None,
         where: str = ""):
    kp = f"{where}{key}"
    if key not in raw:
        if required:
            err(kp, "missing")
        return default
    v = raw[key]
    ok = isinstance(v, t) and not (isinstance(v, bool) and t is not bool)
    if not ok:
        err(kp, f"must be {_type_name(t)}, got {v!r}")
    return v


def _string_list(raw: dict, key: str, err: _Errors, default=None) -> list[str]:
    v = _get(raw, key, list, err, required=default is None, default=default)
    if not v:
        err(key, "must not be empty")
    for i, s in enumerate(v):
        if not isinstance(s, str) or not s:
            err(f"{key}[{i}]", f"must be a non-empty string, got {s!r}")
    return list(v)


def _parse_metric(name: str, key_path: str, err: _Errors) -> Metric:
    parts = [p.strip() for p in name.split("/")]
    if len(parts) == 1:
        return Metric(name, parts[0])
    if len(parts) != 2 or not all(parts):
        err(key_path, f"{name!r}: a metric is a name or a ratio 'a/b'")
    try:
        den: str | float = float(parts[1])
    except ValueError:
        den = parts[1]
    if den == 0:
        err(key_path, f"{name!r}: divides by zero")
    return Metric(name, parts[0], den)


def _check_settable(key: str, key_path: str, err: _Errors) -> None:
    if key in RESERVED_KEYS:
        why = {"kvm.host_state": "use `strategies`", "sim.seed": "use `seed` (replication r "
               "runs with seed + r)", "sim.warmup_us": "use `warmup_us`"}[key]
        err(key_path, f"{key} is set by the study itself: {why}")


def _flatten(table: dict, where: str, err: _Errors, *, keep_ranges: bool = False
             ) -> dict[str, Any]:
    """{"a": {"b": 1}, "c.d": 2} -> {"a.b": 1, "c.d": 2}; range tables are kept as leaves."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: dict) -> None:
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict) and v and not (keep_ranges and set(v) <= RANGE_KEYS):
                walk(key, v)
            else:
                out[key] = v

    walk("", table)
    return out


def _factors(table: dict, err: _Errors) -> list[Dimension]:
    dims = []
    for key, spec in _flatten(table, "factors", err, keep_ranges=True).items():
        kp = f"factors.{key}"
        _check_settable(key, kp, err)
        levels = _levels(spec, kp, err)
        dims.append(Dimension((key,), tuple((v,) for v in levels)))
    return dims


def _lockstep(group: Any, where: str, err: _Errors) -> Dimension:
    if not isinstance(group, dict) or not group:
        err(where, "must be a non-empty table of key = list")
    group = dict(group)
    name = _get(group, "name", str, err, where=f"{where}.") if "name" in group else None
    labels = _get(group, "labels", list, err, where=f"{where}.") if "labels" in group else None
    group.pop("name", None)
    group.pop("labels", None)
    flat = _flatten(group, where, err, keep_ranges=True)
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
    return Dimension(tuple(columns), levels, name, labels)


def _levels(spec: Any, kp: str, err: _Errors, *, unique: bool = True) -> list[Any]:
    if isinstance(spec, dict):
        levels = _range(spec, kp, err)
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


def _range(spec: dict, kp: str, err: _Errors) -> list[float | int]:
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


def _replications(table: dict, metric_names: set[str], err: _Errors) -> Replications:
    w = "replications."
    allowed = ("count", "target_rel_halfwidth", "min", "max", "metrics")
    for k in table:
        if k not in allowed:
            err(w + k, f"unknown key (allowed: {', '.join(allowed)})")
    if "count" in table:
        extra = [k for k in table if k != "count"]
        if extra:
            err(w + extra[0], "not allowed with count (a fixed count has no stopping rule)")
        count = _get(table, "count", int, err, where=w)
        if count < 1:
            err(w + "count", "must be >= 1")
        return Replications(count=count)
    if "target_rel_halfwidth" not in table:
        err("replications", "needs count, or target_rel_halfwidth with min and max")
    target = float(_get(table, "target_rel_halfwidth", (int, float), err, where=w))
    if not 0 < target < 1:
        err(w + "target_rel_halfwidth", "must be between 0 and 1 (a fraction of the mean)")
    lo = _get(table, "min", int, err, where=w, default=5)
    hi = _get(table, "max", int, err, where=w, required=True)
    if lo < 2:
        err(w + "min", "must be >= 2 (a confidence interval needs two runs)")
    if hi < lo:
        err(w + "max", f"must be >= min ({lo})")
    names = table.get("metrics", sorted(metric_names))
    if not isinstance(names, list) or not names:
        err(w + "metrics", "must be a non-empty list of reported metrics")
    for i, n in enumerate(names):
        if n not in metric_names:
            err(f"{w}metrics[{i}]", f"{n!r} is not one of the reported metrics")
    return Replications(target_rel_halfwidth=target, min=lo, max=hi, metrics=tuple(names))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _pct(x: float | None) -> str:
    return f"{x * 100:g}%"
