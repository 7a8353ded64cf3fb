"""Driving a study: design points x strategies x replications -> rows -> tables, plots, report.

The lifecycle is plain: *resolve* every run's scenario up front (so a bad factor key fails
before any run), *run* the batch on the executor while appending rows to the store, *decide*
(sequential rule only) which points need more replications and loop, then *collect* the rows
in design order and write the outputs.  Every decision depends only on finished rows, never on
timing, so the rows are the same for any executor and worker count.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tdsim.study.execute import (
    InProcessExecutor,
    RunOne,
    RunTask,
    run_model,
)
from tdsim.study.spec import DesignPoint, Study, StudyError
from tdsim.study.stats import replications_needed
from tdsim.study.store import ResultStore, RunKey, row_key
from tdsim.study.summary import Summary, summarize

Resolver = Callable[[Study, dict[str, Any]], dict[str, Any]]
"""Resolves the study's base scenario under dotted-key overrides to the full scenario data."""

STORE_NAME = "results.jsonl"


def resolve_scenario(study: Study, overrides: dict[str, Any]) -> dict[str, Any]:
    """The model's scenario loader: validates every key and fills every default."""
    from tdsim.scenario import load_scenario

    return load_scenario(study.scenario_path, overrides).data


def scenario_sha256(data: dict[str, Any]) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def run_overrides(study: Study, point: DesignPoint, strategy: str, replication: int
                  ) -> dict[str, Any]:
    """Every override of one run: study-wide, the point's factors, strategy, seed, warm-up."""
    ov = dict(study.overrides)
    ov.update(point.values)
    ov["kvm.host_state"] = strategy
    ov["sim.seed"] = study.seed_of(replication)
    if study.warmup_us is not None:
        ov["sim.warmup_us"] = study.warmup_us
    return ov


def make_task(study: Study, point: DesignPoint, strategy: str, replication: int,
              resolver: Resolver) -> RunTask:
    data = resolver(study, run_overrides(study, point, strategy, replication))
    return RunTask(
        point_index=point.index, point=point.values, strategy=strategy,
        replication=replication, seed=study.seed_of(replication), scenario=data,
        scenario_sha256=scenario_sha256(data), scenario_name=study.scenario_path.name,
    )


def resolve_points(study: Study, resolver: Resolver | None = None) -> list[dict[str, Any]]:
    """The resolved scenario of every design point (baseline strategy, replication 0); raises
    the loader's error for a factor key or level the scenario does not accept."""
    resolver = resolver or resolve_scenario
    return [resolver(study, run_overrides(study, p, study.baseline, 0))
            for p in study.points()]


@dataclass
class StudyRun:
    """What a study produced."""

    study: Study
    rows: list[dict[str, Any]]       # one per run, in design order
    summary: Summary
    ran: int = 0                     # runs executed now
    reused: int = 0                  # runs taken from the store (--resume)
    stale_rows: int = 0              # rows in the store that match no run of this study
    skipped_lines: int = 0           # torn/corrupt store lines
    resolved: dict[int, dict[str, Any]] = field(default_factory=dict)  # point -> scenario
    files: list[Path] = field(default_factory=list)

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] != "ok"]


def run_study(study: Study, out_dir: str | Path, *, executor=None, run_one: RunOne | None = None,
              resolver: Resolver | None = None, resume: bool = False,
              progress: bool = False, write_outputs: bool = True) -> StudyRun:
    """Run (or resume) `study`, storing rows in ``out_dir/results.jsonl`` as they finish."""
    out_dir = Path(out_dir)
    store = ResultStore(out_dir / STORE_NAME)
    if store.exists() and not resume:
        raise StudyError(store.path, "", "already holds runs: use --resume to continue that "
                         "study, or another --out")
    previous = store.load() if resume else {}
    skipped_lines = store.skipped_lines
    executor = executor or InProcessExecutor()
    resolver = resolver or resolve_scenario
    run_one = run_one or run_model

    points = study.points()
    rows: dict[RunKey, dict[str, Any]] = {}
    order: dict[RunKey, tuple[int, int, int]] = {}
    scheduled = {p.index: 0 for p in points}
    wanted = {p.index: study.replications.first_batch for p in points}
    resolved: dict[int, dict[str, Any]] = {}
    ran = reused = 0

    with _Progress(progress, study.name) as bar:
        while True:
            batch = []
            for p in points:
                for rep in range(scheduled[p.index], wanted[p.index]):
                    for si, strategy in enumerate(study.strategies):
                        task = make_task(study, p, strategy, rep, resolver)
                        order[task.key] = (p.index, si, rep)
                        if rep == 0 and strategy == study.baseline:
                            resolved[p.index] = task.scenario
                        old = previous.get(task.key)
                        if old is not None and old["status"] == "ok":
                            rows[task.key] = old
                            reused += 1
                        else:
                            batch.append(task)
                scheduled[p.index] = wanted[p.index]
            bar.grow(len(batch), reused)
            for row in executor.map(run_one, batch):
                store.append(row)
                rows[row_key(row)] = row
                ran += 1
                bar.advance(row)
            if not study.replications.sequential:
                break
            grew = False
            partial = summarize(study, _in_order(rows, order))
            for p in points:
                n = scheduled[p.index]
                if any(partial.runs[(p.index, s)][1] for s in study.strategies):
                    continue  # a failing point: more replications would fail alike
                nxt = replications_needed(
                    n, partial.rel_halfwidths(p.index, study.replications.metrics),
                    study.replications.target_rel_halfwidth, study.replications.max)
                if nxt > n:
                    wanted[p.index] = nxt
                    grew = True
            if not grew:
                break

    final = _in_order(rows, order)
    result = StudyRun(study, final, summarize(study, final), ran=ran, reused=reused,
                      stale_rows=len(set(previous) - set(order)), skipped_lines=skipped_lines,
                      resolved=resolved)
    if write_outputs:
        from tdsim.study.report import write_outputs as _write

        result.files = _write(result, out_dir, executor_name=executor.name)
    return result


def _in_order(rows: dict[RunKey, dict], order: dict[RunKey, tuple[int, int, int]]
              ) -> list[dict[str, Any]]:
    return [rows[k] for k in sorted(rows, key=order.__getitem__)]


class _Progress:
    """A rich progress bar on stderr whose total grows with each batch (or nothing)."""

    def __init__(self, enabled: bool, name: str) -> None:
        self.enabled = enabled
        self.name = name
        self.errors = 0

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[errors]} errors"), TimeElapsedColumn(),
                TimeRemainingColumn(), console=Console(stderr=True),
            )
            self._p.__enter__()
            self._task = self._p.add_task(self.name, total=0, errors=0)
        return self

    def grow(self, n_new: int, reused: int) -> None:
        """Add a batch of `n_new` runs to execute; `reused` runs came from the store."""
        if self.enabled:
            total = (self._p.tasks[0].total or 0) + n_new
            desc = f"{self.name} ({reused} reused)" if reused else self.name
            self._p.update(self._task, total=total, description=desc)

    def advance(self, row: dict[str, Any]) -> None:
        if self.enabled:
            self.errors += row["status"] != "ok"
            self._p.update(self._task, advance=1, errors=self.errors)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._p.__exit__(*exc)
