"""Running a study's runs: in this process, on a local process pool, or on a Dask cluster.

A `RunTask` carries the fully resolved scenario, so a worker needs tdsim installed but not the
study or scenario files.  `execute_task` turns a task into a result row whatever happens: an
exception in the model becomes an ``error`` row and the study goes on.  Executors yield rows in
completion order; the runner sorts them by design key, so the rows are identical (but for
``wall_s``) whatever the executor or the number of workers.

The local pool is made once per study and kept warm: its workers import the model once, run
both stages of a sequential study, and then draw the plots (`LocalExecutor.call`).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from tdsim.study.provenance import row_provenance
from tdsim.study.store import RunKey

RunOne = Callable[["RunTask"], dict[str, Any]]
"""Runs one task, returns {"metrics": {name: number}, "violations": [dict, ...]} and, when
the model provides them, "series": {metric: [value per window]}."""

MAX_VIOLATION_EXAMPLES = 3

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class RunTask:
    """One run: a design point under one strategy and one replication."""

    point_index: int
    point: tuple[tuple[str, Any], ...]
    strategy: str
    replication: int
    seed: int
    scenario: dict[str, Any]  # resolved scenario data (strategy and seed already applied)
    scenario_sha256: str
    scenario_name: str = "study"
    window_ns: int = 0                    # > 0: ask the model for per-window series ...
    series_terms: tuple[str, ...] = ()    # ... and keep these (``*`` allowed)

    @property
    def key(self) -> RunKey:
        from tdsim.study.design import point_key

        return (point_key(dict(self.point)), self.strategy, self.replication,
                self.scenario_sha256)


def model_has_series() -> bool:
    """Whether the model's `run` takes ``windows_ns`` (and fills ``Result.series``): the
    hook the warm-up analysis needs (docs/studies.md, "Warm-up")."""
    import inspect

    from tdsim.sim import run

    return "windows_ns" in inspect.signature(run).parameters


def run_model(task: RunTask) -> dict[str, Any]:
    """The real run: `tdsim.sim.run` on the task's resolved scenario."""
    from tdsim.scenario import scenario_from_dict
    from tdsim.sim import run

    scenario = scenario_from_dict(task.scenario, name=task.scenario_name)
    out: dict[str, Any] = {}
    if task.window_ns > 0 and model_has_series():
        result = run(scenario, windows_ns=task.window_ns)  # type: ignore[call-arg, unused-ignore]
        out["series"] = keep_series(getattr(result, "series", {}), task.series_terms)
    else:
        result = run(scenario)
    metrics: dict[str, Any] = dict(result.metrics)
    metrics["run.measured_s"] = measured_ns(metrics) / 1e9
    out.update(metrics=metrics, violations=list(result.violations))
    return out


def keep_series(series: dict[str, Any], terms: tuple[str, ...]) -> dict[str, list[float]]:
    """The model's per-window series of the metrics `terms` name (a row keeps only these)."""
    from tdsim.study.design import term_reported

    return {k: [float(x) for x in v] for k, v in sorted(series.items())
            if any(term_reported(t, {k}) for t in terms)}


def measured_ns(metrics: dict[str, Any]) -> float:
    """The simulated span the metrics cover, so studies can report rates
    ("wrmsr.total/run.measured_s"): ``sim.measured_ns`` (duration minus an applied warm-up),
    or the whole run from a model that predates warm-up."""
    return float(metrics.get("sim.measured_ns", metrics["sim.duration_ns"]))


def _row_head(task: RunTask) -> dict[str, Any]:
    row: dict[str, Any] = {
        "point": dict(task.point),
        "point_index": task.point_index,
        "strategy": task.strategy,
        "replication": task.replication,
        "seed": task.seed,
        "scenario_sha256": task.scenario_sha256,
    }
    row.update(row_provenance())
    return row


def execute_task(run_one: RunOne, task: RunTask) -> dict[str, Any]:
    """Run `task` and build its row; never raises for a failure inside the run."""
    row = _row_head(task)
    start = time.perf_counter()
    try:
        out = run_one(task)
        metrics = dict(out["metrics"])
        violations = list(out.get("violations", ()))
    except Exception as e:
        row.update(status="error", error=f"{type(e).__name__}: {e}".splitlines()[0],
                   traceback=traceback.format_exc(), metrics={}, violation_examples=[])
    else:
        # The model counts every violation as violations.<invariant> (records may be capped);
        # a runner that only lists records gets them counted here.
        if not any(k.startswith("violations.") for k in metrics):
            for v in violations:
                name = f"violations.{v.get('invariant', 'unknown')}"
                metrics[name] = metrics.get(name, 0) + 1
        metrics["violations"] = sum(v for k, v in metrics.items()
                                    if k.startswith("violations."))
        row.update(status="ok", error=None, traceback=None, metrics=metrics,
                   violation_examples=violations[:MAX_VIOLATION_EXAMPLES])
        if out.get("series"):
            row["series"] = out["series"]
    row["wall_s"] = time.perf_counter() - start
    return row


def configure_worker() -> None:
    """Worker-process set-up: structlog is process-global, so each worker configures it once
    (warnings and errors only; the parent owns the terminal), and the model is imported once
    here rather than in the first run.  A thread "worker" inside the study's own process
    (Dask with processes=False) leaves the parent's configuration alone."""
    import structlog

    if multiprocessing.parent_process() is None:
        return
    _exit_with_parent()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        cache_logger_on_first_use=True,
    )
    import tdsim.sim  # noqa: F401  (warm the worker: the import is the first run's cost)


def import_matplotlib() -> None:
    """Import matplotlib with the Agg backend (no display).  It is the largest fixed cost of
    a study (about 0.9 s), so executors do it ahead, in their idle time; `tdsim.study.plots`
    calls it before drawing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot


def configure_plotting_worker() -> None:
    """`configure_worker`, and matplotlib imported while the runs are being handed out: the
    workers draw the figures at the end (`LocalExecutor.call`)."""
    configure_worker()
    if multiprocessing.parent_process() is not None:
        import_matplotlib()


def import_matplotlib_in_background() -> threading.Thread:
    """Import matplotlib on a thread of this process while it waits for runs: the figures
    are drawn here (in-process and Dask executors).  Never together with fork: a pool made
    while this thread holds the import lock would deadlock its children."""
    thread = threading.Thread(target=import_matplotlib, name="import-matplotlib", daemon=True)
    thread.start()
    return thread


def _exit_with_parent(poll_s: float = 1.0) -> None:
    """A worker whose study process was killed exits instead of running on as an orphan."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class Executor(Protocol):
    name: str

    def map(self, run_one: RunOne, tasks: Iterable[RunTask]) -> Iterator[dict[str, Any]]: ...

    def call(self, fn: Callable[[T], R], items: list[T]) -> list[R]: ...

    def close(self) -> None: ...


class InProcessExecutor:
    """Runs tasks one after the other in this process (``--jobs 1``; easiest to debug)."""

    name = "local, 1 job"

    def __init__(self, *, warm_plotting: bool = False) -> None:
        if warm_plotting:
            import_matplotlib_in_background()

    def map(self, run_one: RunOne, tasks: Iterable[RunTask]) -> Iterator[dict[str, Any]]:
        for task in tasks:
            yield execute_task(run_one, task)

    def call(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """`fn` over `items` here (output work such as plots, in order)."""
        return [fn(x) for x in items]

    def close(self) -> None:
        pass


class LocalExecutor:
    """A pool of `jobs` worker processes on this machine, kept for the whole study.

    If a run kills its worker outright (a crash, not an exception), the unfinished tasks of
    that batch are recorded as errors and the next batch (or a ``--resume``) gets a fresh
    pool.
    """

    def __init__(self, jobs: int, *, warm_plotting: bool = False) -> None:
        if jobs < 1:
            raise ValueError("jobs must be >= 1")
        self.jobs = jobs
        self.name = f"local, {jobs} jobs"
        self._pool: cf.ProcessPoolExecutor | None = None
        self._init = configure_plotting_worker if warm_plotting else configure_worker

    def _get_pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(max_workers=self.jobs, initializer=self._init)
        return self._pool

    def map(self, run_one: RunOne, tasks: Iterable[RunTask]) -> Iterator[dict[str, Any]]:
        tasks = list(tasks)
        if not tasks:
            return
        pool = self._get_pool()
        futures = {pool.submit(execute_task, run_one, t): t for t in tasks}
        broken = False
        try:
            for fut in cf.as_completed(futures):
                try:
                    yield fut.result()
                except cf.process.BrokenProcessPool as e:
                    broken = True
                    yield _lost_row(futures[fut], f"worker process died: {e}")
        finally:
            for fut in futures:
                fut.cancel()
            if broken:
                self._discard_pool()

    def call(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """`fn` over `items` on the warm workers (in order of `items`)."""
        if len(items) < 2:
            return [fn(x) for x in items]
        return list(self._get_pool().map(fn, items))

    def _discard_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class DaskExecutor:
    """Tasks on a Dask distributed cluster: a scheduler address, an existing `Client`, or
    (`scheduler` None) a `LocalCluster` of `n_workers` single-threaded processes.

    Workers need tdsim (and its dependencies) importable; the scenario travels in the task.
    Output work (plots) stays in this process: the workers may not share its file system.
    """

    def __init__(self, scheduler: Any = None, *, n_workers: int = 1,
                 warm_plotting: bool = False) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise RuntimeError("the dask executor needs the optional extra: "
                               "pip install 'tdsim[dask]'") from e
        self._cluster = None
        if isinstance(scheduler, Client):
            self.client, self._own = scheduler, False
        elif scheduler is None:
            self._cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1)
            self.client, self._own = Client(self._cluster), True
        else:
            self.client, self._own = Client(scheduler), True
        self.client.register_worker_callbacks(configure_worker)
        self.name = f"dask, {self.client.scheduler.address}"
        if warm_plotting:
            import_matplotlib_in_background()

    def map(self, run_one: RunOne, tasks: Iterable[RunTask]) -> Iterator[dict[str, Any]]:
        from distributed import as_completed

        tasks = list(tasks)
        if not tasks:
            return
        futures = {self.client.submit(execute_task, run_one, t, pure=False): t for t in tasks}
        try:
            for fut in as_completed(futures):
                try:
                    yield fut.result()
                except Exception as e:
                    yield _lost_row(futures[fut], f"{type(e).__name__}: {e}")
        finally:
            self.client.cancel([f for f in futures if not f.done()])

    def call(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        return [fn(x) for x in items]

    def close(self) -> None:
        if self._own:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def _lost_row(task: RunTask, why: str) -> dict[str, Any]:
    """The row of a task whose worker was lost (rerun by ``--resume``)."""
    row = _row_head(task)
    row.update(status="error", error=why.splitlines()[0] if why else "lost", traceback=None,
               metrics={}, violation_examples=[], wall_s=0.0)
    return row
