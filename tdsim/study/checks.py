"""Checks that need more than the study file, made before any run: the output directory can be
written, and every factor level, override and cost sample is accepted by the scenario.

Each failure is one `StudyError` line naming the *study* file and the study's key path
(``factors.host.taskz``, ``lockstep[0]``, ``overrides.sim.duration_us``), with the scenario
loader's own message after it, so the user knows which line of which file to fix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from tdsim.study import runner
from tdsim.study.design import Study, StudyError, fmt_value
from tdsim.study.runner import Resolver, run_overrides


def check_out_dir(study: Study, out: Path, *, create: bool = False) -> None:
    """`out` exists as a writable directory, or can be created: its nearest existing
    ancestor is a writable directory.  With `create`, make it and write a probe file there
    (which also catches what permission bits do not say); otherwise create nothing."""
    if create:
        try:
            out.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=out):
                pass
        except OSError as e:
            raise StudyError(study.path, "--out", f"cannot write to {out}: "
                             f"{e.strerror or e}") from None
        return
    probe = out.resolve()
    while not probe.exists():
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    if probe.exists() and not probe.is_dir():
        raise StudyError(study.path, "--out", f"cannot write to {out}: {probe} is not a "
                         "directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == out.resolve() else f" (in {probe})"
        raise StudyError(study.path, "--out", f"cannot write to {out}: permission "
                         f"denied{where}")


def _scenario_errors() -> tuple[type[Exception], ...]:
    from tdsim.scenario import ScenarioError

    return (ScenarioError, StudyError)


def _message(e: Exception) -> str:
    return getattr(e, "message", None) or str(e).splitlines()[0]


def _scenario_key(e: Exception) -> str:
    return str(getattr(e, "key", "") or "")


def resolve_points(study: Study, resolver: Resolver | None = None) -> list[dict[str, Any]]:
    """The resolved scenario of every design point (baseline strategy, replication 0).

    Each source of overrides is tried on its own first, so an error names the study key that
    caused it: the fixed overrides, then each level of each dimension, then the strategies,
    then every combination (a level may be fine alone and clash with another dimension's)."""
    resolver = resolver or runner.resolve_scenario  # looked up now: tests replace it
    bad = _scenario_errors()
    base = dict(study.overrides)
    if study.warmup_us is not None:
        base["sim.warmup_us"] = study.warmup_us
    try:
        resolver(study, base)
    except bad as e:
        kp = "overrides" if study.overrides else "scenario"
        key = _scenario_key(e)
        if study.overrides and key:
            kp = next((f"overrides.{k}" for k, _ in study.overrides if key.startswith(k)), kp)
        raise StudyError(study.path, kp, f"the scenario refuses it: {_message(e)}") from None
    for dim in study.dimensions:
        for i, level in enumerate(dim.levels):
            try:
                resolver(study, {**base, **dict(zip(dim.keys, level, strict=True))})
            except bad as e:
                raise StudyError(study.path, _level_path(dim.key_path, dim.keys, e, i),
                                 f"{dim.level_label(i)}: the scenario refuses it: "
                                 f"{_message(e)}") from None
    for i, s in enumerate(study.strategies):
        try:
            resolver(study, {**base, "kvm.host_state": s})
        except bad as e:
            raise StudyError(study.path, f"strategies[{i}]", f"{s!r}: {_message(e)}") from None
    out = []
    for p in study.points():
        try:
            out.append(resolver(study, run_overrides(study, p, study.baseline, 0)))
        except bad as e:
            raise StudyError(study.path, "factors", f"the combination "
                             f"{study.point_label(p, costs=True)} is refused by the "
                             f"scenario: {_message(e)}") from None
    return out


def _level_path(key_path: str, keys: tuple[str, ...], e: Exception, level: int) -> str:
    """``factors.host.tasks[2]``; for a lockstep group, the key the scenario named."""
    if key_path.startswith("factors."):
        return f"{key_path}[{level}]"
    key = _scenario_key(e).replace("[", ".").replace("]", "")
    named = next((k for k in keys if key and key.startswith(k)), None)
    return f"{key_path}.{named}[{level}]" if named else f"{key_path}[{level}]"


def describe(study: Study) -> str:
    """The dry-run listing: design points, strategies, replications and the run count."""
    points = study.points()
    reps = study.replications
    lines = [f"study {study.name}: {study.question}",
             f"scenario: {study.scenario_path}",
             "strategies: " + ", ".join(s + (" (baseline)" if s == study.baseline else "")
                                        for s in study.strategies),
             "metrics: " + ", ".join(m.name for m in study.metrics),
             "compare: " + ("; ".join(c.describe(study) for c in study.comparisons)
                            or "nothing (one strategy, no compared factor)"),
             f"design points: {len(points)}"]
    shown = points if study.cost_dimension is None else [
        p for p in points if p.levels[study.cost_dimension] == 0]
    lines += [f"  {p.index:>4}  {study.point_label(p)}" for p in shown]
    if study.uncertainty is not None:
        u = study.uncertainty
        lines.append(f"  ... each at the nominal costs and {u.samples} Latin hypercube "
                     f"samples of {len(u.costs)} costs")
    lines.append(f"replications: {reps.describe()}")
    per = len(points) * len(study.strategies)
    if reps.count is None:
        lines.append(f"runs: {len(points)} points x {len(study.strategies)} strategies x "
                     f"{reps.min}..{reps.max} replications = {per * reps.min}..{per * reps.max}")
    else:
        lines.append(f"runs: {len(points)} points x {len(study.strategies)} strategies x "
                     f"{reps.count} replications = {per * reps.count}")
    if study.overrides:
        lines.append("overrides: " + ", ".join(f"{k}={fmt_value(v)}"
                                               for k, v in study.overrides))
    return "\n".join(lines)
