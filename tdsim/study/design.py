"""What a validated study file says: dimensions, design points, metrics, comparisons and the
replication rule (`tdsim.study.spec` reads and checks the file into these)."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


class StudyError(ValueError):
    """Bad study input; the message is one line: ``<file>: <key path>: <message>``."""

    def __init__(self, file: str | Path, key_path: str, message: str) -> None:
        self.file = str(file)
        self.key_path = key_path
        self.message = " ".join(message.splitlines())
        super().__init__(f"{file}: {key_path}: {self.message}" if key_path
                         else f"{file}: {self.message}")


def replication_seed(study_seed: int, replication: int) -> int:
    """The run seed of replication `replication` under study seed `study_seed`: 48 bits of
    SHA-256 over both, so studies with neighbouring seeds (1 and 2) share no replication, and
    the seed is the same in every process (the shape of `tdsim.rng.stream_seed`)."""
    digest = hashlib.sha256(f"tdsim.study:{study_seed}:{replication}".encode()).digest()
    return int.from_bytes(digest[:6], "little")


def point_key(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


def fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Dimension:
    """One swept axis: a single factor, a lockstep group of keys that move together, or the
    cost samples of an uncertainty analysis (`role` "costs")."""

    keys: tuple[str, ...]
    levels: tuple[tuple[Any, ...], ...]  # one tuple per level, aligned with `keys`
    name: str | None = None               # lockstep groups may be named ...
    labels: tuple[str, ...] | None = None  # ... and their levels too
    key_path: str = ""                    # where the study file declares it (for errors)
    role: Literal["factor", "costs"] = "factor"

    @property
    def label(self) -> str:
        return self.name or " | ".join(self.keys)

    @property
    def slug(self) -> str:
        if self.name:
            return "".join(c if c.isalnum() else "_" for c in self.name)
        return "__".join(k.replace(".", "_") for k in self.keys)

    def level_label(self, i: int) -> str:
        """The level's label, else the value(s); a named lockstep group is labelled by its
        first key (the one that drives it, by the convention of its file)."""
        if self.labels:
            return self.labels[i]
        if self.name:
            return fmt_value(self.levels[i][0])
        return " | ".join(fmt_value(v) for v in self.levels[i])

    @property
    def numeric(self) -> bool:
        """True when the first key's levels are all numbers and the levels carry no labels
        (plotted on a numeric axis against that key)."""
        return self.labels is None and all(
            isinstance(lv[0], (int, float)) and not isinstance(lv[0], bool)
            for lv in self.levels)


@dataclass(frozen=True)
class DesignPoint:
    """One combination of levels, one per dimension."""

    index: int
    levels: tuple[int, ...]              # level index per dimension
    values: tuple[tuple[str, Any], ...]  # (dotted key, value) in dimension order

    @property
    def key(self) -> str:
        """Canonical identity of the point (stable across processes and study edits)."""
        return point_key(dict(self.values))


def _term_regex(term: str) -> re.Pattern[str] | None:
    """``cpu.*.ns.kvm``: one ``*`` segment matches any one dotted segment (summed)."""
    if "*" not in term.split("."):
        return None
    return re.compile(r"\.".join(r"[^.]+" if s == "*" else re.escape(s)
                                 for s in term.split(".")))


@dataclass(frozen=True)
class Metric:
    """A reported metric: a model metric name, a sum over a ``*`` segment
    (``cpu.*.ns.kvm``), or a ratio ``a/b`` of two of them or of one and a number."""

    name: str
    numerator: str
    denominator: str | float | None = None

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(n for n in (self.numerator, self.denominator) if isinstance(n, str))

    @property
    def is_ratio(self) -> bool:
        return isinstance(self.denominator, str)

    def parts(self, metrics: dict[str, Any], absent: float | None = None
              ) -> tuple[float, float] | None:
        """(numerator, denominator) of one run (denominator 1 for a plain metric); a needed
        model metric that is not there counts as `absent` (None: no value)."""
        num = term_value(self.numerator, metrics, absent)
        if num is None:
            return None
        if self.denominator is None:
            return num, 1.0
        if isinstance(self.denominator, float):
            return num, self.denominator
        den = term_value(self.denominator, metrics, absent)
        return None if den is None else (num, den)

    def value(self, metrics: dict[str, Any], absent: float | None = None) -> float | None:
        """This metric of one run (a ratio per run; nan over a zero denominator)."""
        p = self.parts(metrics, absent)
        if p is None:
            return None
        return p[0] / p[1] if p[1] != 0 else math.nan


def term_value(term: str, metrics: dict[str, Any], absent: float | None) -> float | None:
    regex = _term_regex(term)
    if regex is None:
        v = metrics.get(term)
        return absent if v is None else float(v)
    hits = [float(v) for k, v in metrics.items() if regex.fullmatch(k)]
    return math.fsum(hits) if hits else absent


def term_reported(term: str, names: set[str]) -> bool:
    """Whether any of `names` (metrics some run reported) is or matches `term`."""
    regex = _term_regex(term)
    return term in names if regex is None else any(regex.fullmatch(n) for n in names)


@dataclass(frozen=True)
class Replications:
    """A fixed count, or the two-stage sequential procedure (`tdsim.study.stats`): a first
    stage of `min`, then as many as the first stage says the `target_rel_halfwidth` needs,
    up to `max`."""

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
        return self.min if self.count is None else self.count

    def describe(self) -> str:
        if self.count is not None:
            return f"{self.count} per design point and strategy"
        return (f"two-stage sequential: a first stage of {self.min}, then as many as needed "
                f"(at most {self.max}) for a {_pct(self.target_rel_halfwidth)} relative CI "
                f"half-width of {', '.join(self.metrics)}")


@dataclass(frozen=True)
class Comparison:
    """Differences the study asks about: each strategy minus the baseline strategy
    (`dimension` None), or each level of a dimension minus its baseline level."""

    dimension: int | None = None
    baseline_level: int = 0

    def describe(self, study: Study) -> str:
        """``v6.16 - current, eager - current`` or ``copy - in_place (kvm.regs_layout)``."""
        minus = " \u2212 "
        if self.dimension is None:
            return ", ".join(f"{s}{minus}{study.baseline}" for s in study.strategies
                             if s != study.baseline)
        d = study.dimensions[self.dimension]
        base = d.level_label(self.baseline_level)
        pairs = ", ".join(f"{d.level_label(i)}{minus}{base}" for i in range(len(d.levels))
                          if i != self.baseline_level)
        return f"{pairs} ({d.label})"


@dataclass(frozen=True)
class MinEffect:
    """The smallest difference that matters: a fraction of the baseline's mean, or an
    absolute amount in the metric's unit."""

    relative: float | None = None
    absolute: float | None = None
    declared: bool = True

    def threshold(self, baseline_mean: float) -> float:
        if self.absolute is not None:
            return self.absolute
        return abs(baseline_mean) * (self.relative or 0.0)

    def describe(self) -> str:
        if self.absolute is not None:
            return f"{self.absolute:g}"
        return f"{_pct(self.relative)} of the baseline mean"


DEFAULT_MIN_EFFECT = MinEffect(relative=0.01, declared=False)


@dataclass(frozen=True)
class SeriesSpec:
    """Per-window time series the runs record for the warm-up analysis."""

    metrics: tuple[str, ...] = ()
    window_us: float = 0.0


@dataclass(frozen=True)
class Uncertainty:
    """A Latin hypercube over the plausible ranges of `costs` (plus the nominal costs)."""

    costs: tuple[str, ...]
    ranges: tuple[tuple[int, int], ...]
    samples: int
    seed: int


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
    comparisons: tuple[Comparison, ...] = ()
    ratio_estimator: Literal["ratio_of_means", "mean_of_ratios"] = "ratio_of_means"
    min_effects: tuple[tuple[str, MinEffect], ...] = ()
    default_min_effect: MinEffect = DEFAULT_MIN_EFFECT
    series: SeriesSpec = field(default_factory=SeriesSpec)
    uncertainty: Uncertainty | None = None

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
        return replication_seed(self.seed, replication)

    @property
    def factor_dimensions(self) -> list[tuple[int, Dimension]]:
        return [(i, d) for i, d in enumerate(self.dimensions) if d.role == "factor"]

    @property
    def cost_dimension(self) -> int | None:
        return next((i for i, d in enumerate(self.dimensions) if d.role == "costs"), None)

    def point_label(self, point: DesignPoint, *, costs: bool = False) -> str:
        """``dim=level, ...`` using dimension names and level labels where given (the cost
        sample only when `costs`)."""
        parts = [f"{d.label}={d.level_label(lv)}"
                 for d, lv in zip(self.dimensions, point.levels, strict=True)
                 if costs or d.role == "factor"]
        return ", ".join(parts) or "(base scenario)"

    def metric(self, name: str) -> Metric:
        return next(m for m in self.metrics if m.name == name)

    def min_effect(self, metric: str) -> MinEffect:
        return dict(self.min_effects).get(metric, self.default_min_effect)

    @property
    def interval_confidence(self) -> float:
        from tdsim.study.stats import interval_confidence

        return interval_confidence(self.confidence, self.replications.sequential)

    def sequential_groups(self) -> list[list[int]]:
        """Points whose replication counts must move together: points compared with each
        other (levels of a compared dimension) share one count so their runs stay paired."""
        compared = {c.dimension for c in self.comparisons if c.dimension is not None}
        groups: dict[tuple[int, ...], list[int]] = {}
        for p in self.points():
            key = tuple(-1 if i in compared else lv for i, lv in enumerate(p.levels))
            groups.setdefault(key, []).append(p.index)
        return list(groups.values())


def _pct(x: float | None) -> str:
    return f"{(x or 0.0) * 100:g}%"
