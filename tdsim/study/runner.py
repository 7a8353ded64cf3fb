"""Driving a study: design points x strategies x replications -> rows -> tables, plots, report.

The lifecycle is plain: *check* the store (``--resume`` refuses rows another model wrote),
*resolve* every run's scenario up front, *run* the first batch on the executor while
appending rows to the store, *decide* (sequential studies) each group's final count from its
first stage as soon as that stage is complete, *run* the second stage, then *collect* the rows
in design order and write the outputs.  Every decision depends only on finished rows, never
on timing, so the rows are the same for any executor and worker count.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tdsim.study.design import DesignPoint, Study, StudyError
from tdsim.study.execute import Executor, InProcessExecutor, RunOne, RunTask, run_model
from tdsim.study.progress import Progress
from tdsim.study.provenance import foreign_rows, model_sha256
from tdsim.study.sequential import decide
from tdsim.study.store import ResultStore, RunKey, row_key
from tdsim.study.summary import StudyRun, summarize

Resolver = Callable[[Study, dict[str, Any]], dict[str, Any]]
"""Resolves the study's base scenario under dotted-key overrides to the full scenario data."""

STORE_NAME = "results.jsonl"

_RESOLVED: dict[tuple[str, int, int, str], dict[str, Any]] = {}


def resolve_scenario(study: Study, overrides: dict[str, Any]) -> dict[str, Any]:
    """The model's scenario loader: validates every key and fills every default.

    Replications differ only in ``sim.seed``, which no other key depends on, so the scenario
    is resolved once per point and strategy and the seed set in a copy."""
    from tdsim.scenario import load_scenario

    rest = {k: v for k, v in overrides.items() if k != "sim.seed"}
    stat = study.scenario_path.stat()  # an edited file is resolved afresh
    key = (str(study.scenario_path), stat.st_mtime_ns, stat.st_size,
           json.dumps(rest, sort_keys=True, default=str))
    data = _RESOLVED.get(key)
    if data is None:
        if len(_RESOLVED) > 4096:
            _RESOLVED.clear()
        data = _RESOLVED[key] = load_scenario(study.scenario_path, rest).data
    data = copy.deepcopy(data)
    if "sim.seed" in overrides:
        data["sim"]["seed"] = overrides["sim.seed"]
    return data


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
    series = study.series
    terms = tuple(n for name in series.metrics for n in study_metric_terms(name))
    return RunTask(
        point_index=point.index, point=point.values, strategy=strategy,
        replication=replication, seed=study.seed_of(replication), scenario=data,
        scenario_sha256=scenario_sha256(data), scenario_name=study.scenario_path.name,
        window_ns=round(series.window_us * 1000), series_terms=terms,
    )


def study_metric_terms(name: str) -> list[str]:
    """The model metric names a study metric expression reads."""
    out = []
    for part in name.split("/"):
        part = part.strip()
        try:
            float(part)
        except ValueError:
            if part != "run.measured_s":
                out.append(part)
    return out


def check_store(study: Study, out_dir: Path, *, resume: bool, allow_mixed: bool
                ) -> tuple[dict[RunKey, dict[str, Any]], int]:
    """The rows a run may reuse (and how many torn lines were skipped); refuses (one
    `StudyError` line naming the store) a store without ``--resume``, or rows another model
    wrote without ``--allow-mixed``."""
    store = ResultStore(out_dir / STORE_NAME)
    if not store.exists():
        return {}, 0
    if not resume:
        raise StudyError(store.path, "", "already holds runs: use --resume to continue that "
                         "study, or another --out")
    previous = store.load()
    digest = model_sha256()
    ok = [r for r in previous.values() if r["status"] == "ok"]
    foreign = foreign_rows(ok, digest)
    if foreign and not allow_mixed:
        other = sorted({str(r.get("model_sha256") or "none recorded")[:12] for r in ok
                        if r.get("model_sha256") != digest})
        raise StudyError(store.path, "", f"{foreign} of {len(ok)} stored runs were made by "
                         f"another model (source digest {', '.join(other)}; this model "
                         f"{digest[:12]}): use another --out, or --allow-mixed to reuse them")
    return previous, store.skipped_lines


def run_study(study: Study, out_dir: str | Path, *, executor: Executor | None = None,
              run_one: RunOne | None = None, resolver: Resolver | None = None,
              resume: bool = False, allow_mixed: bool = False,
              progress: Progress | None = None, write_outputs: bool = True,
              plots: bool = True) -> StudyRun:
    """Run (or resume) `study`, storing rows in ``out_dir/results.jsonl`` as they finish;
    then (`write_outputs`) the tables and report, with figures unless not `plots`."""
    out_dir = Path(out_dir)
    previous, skipped_lines = check_store(study, out_dir, resume=resume,
                                          allow_mixed=allow_mixed)
    store = ResultStore(out_dir / STORE_NAME)
    executor = executor or InProcessExecutor()
    resolver = resolver or resolve_scenario
    run_one = run_one or run_model
    progress = progress or Progress(study.name)
    reps = study.replications
    points = study.points()
    groups = study.sequential_groups() if reps.sequential else []
    group_of = {pi: g for g in groups for pi in g}
    rows: dict[RunKey, dict[str, Any]] = {}
    order: dict[RunKey, tuple[int, int, int]] = {}
    resolved: dict[int, dict[str, Any]] = {}
    final: dict[int, int] = {}  # group's first point -> its decided count
    stage_one_left = {g[0]: len(g) * len(study.strategies) * reps.first_batch for g in groups}
    counts = {"ran": 0, "reused": 0}

    def schedule(first: int, wanted: dict[int, int]) -> list[RunTask]:
        batch = []
        for p in points:
            for rep in range(first, wanted[p.index]):
                for si, strategy in enumerate(study.strategies):
                    task = make_task(study, p, strategy, rep, resolver)
                    order[task.key] = (p.index, si, rep)
                    if rep == 0 and strategy == study.baseline:
                        resolved[p.index] = task.scenario
                    old = previous.get(task.key)
                    if old is not None and old["status"] == "ok":
                        record(old, p.index, rep)
                        counts["reused"] += 1
                    else:
                        batch.append(task)
        return batch

    def record(row: dict[str, Any], point_index: int, rep: int) -> None:
        rows[row_key(row)] = row
        if reps.sequential and rep < reps.first_batch:
            g = group_of[point_index]
            stage_one_left[g[0]] -= 1
            if stage_one_left[g[0]] == 0:
                final[g[0]] = decide(study, [r for r in rows.values()
                                             if r["point_index"] in g], g)
                progress.decided_group((final[g[0]] - reps.first_batch) * len(g)
                                       * len(study.strategies))

    with progress:
        if groups:
            progress.expect_groups(len(groups))
        batch = schedule(0, {p.index: reps.first_batch for p in points})
        progress.schedule(len(batch), counts["reused"])
        for row in executor.map(run_one, batch):
            store.append(row)
            record(row, row["point_index"], row["replication"])
            counts["ran"] += 1
            progress.advance(row)
        if reps.sequential:
            wanted = {pi: final[g[0]] for g in groups for pi in g}
            before = counts["reused"]
            batch = schedule(reps.first_batch, wanted)
            progress.reused += counts["reused"] - before
            progress.schedule_second_stage(len(batch))
            for row in executor.map(run_one, batch):
                store.append(row)
                record(row, row["point_index"], row["replication"])
                counts["ran"] += 1
                progress.advance(row)

    final_rows = [rows[k] for k in sorted(rows, key=order.__getitem__)]
    digest = model_sha256()
    result = StudyRun(study, final_rows, summarize(study, final_rows), ran=counts["ran"],
                      reused=counts["reused"], stale_rows=len(set(previous) - set(order)),
                      skipped_lines=skipped_lines,
                      foreign_rows=foreign_rows([r for r in final_rows if r["status"] == "ok"],
                                                digest),
                      resolved=resolved, executor_name=executor.name)
    if write_outputs:
        from tdsim.study.report import write_outputs as _write

        result.files = _write(result, out_dir, executor, plots=plots)
    return result
