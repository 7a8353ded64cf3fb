"""The same rows whatever runs them: in-process, a process pool, or a Dask cluster."""

from __future__ import annotations

import pytest
import study_fakes
from study_fakes import BASIC, failing_at_x0_runner, resolve, write_study

from tdsim.study.execute import DaskExecutor, InProcessExecutor, LocalExecutor
from tdsim.study.runner import run_study
from tdsim.study.spec import load_study

# Sequential replications make the test stronger: which runs exist depends on results.
SEQUENTIAL = BASIC.replace("count = 4", "target_rel_halfwidth = 0.005\nmin = 10\nmax = 14")


def rows(tmp_path, name, executor):
    study = load_study(write_study(tmp_path, SEQUENTIAL))
    try:
        result = run_study(study, tmp_path / name, executor=executor, run_one=failing_at_x0_runner,
                           resolver=resolve, write_outputs=False)
    finally:
        executor.close()
    return [{k: v for k, v in r.items() if k not in ("wall_s", "traceback")}
            for r in result.rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return rows(tmp_path_factory.mktemp("ref"), "out", InProcessExecutor())


def test_reference_has_failures_and_extra_replications(reference):
    """The reference exercises error rows and the sequential rule (else the test is weak)."""
    assert any(r["status"] == "error" for r in reference)
    assert max(r["replication"] for r in reference) >= 10


@pytest.mark.parametrize("jobs", [1, 2])
def test_process_pool_gives_the_same_rows(tmp_path, reference, jobs):
    """A pool of 1 or 2 worker processes yields the in-process rows exactly."""
    assert rows(tmp_path, "out", LocalExecutor(jobs)) == reference


def _dask_rows(tmp_path, processes: bool):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=processes,
                                  dashboard_address=None) as cluster:
        if processes:  # connect by address, as `--scheduler tcp://...` does
            return rows(tmp_path, "out", DaskExecutor(cluster.scheduler_address))
        with distributed.Client(cluster) as client:
            return rows(tmp_path, "out", DaskExecutor(client))


def test_dask_thread_workers_give_the_same_rows(tmp_path, reference):
    """Dask LocalCluster with 2 in-process workers yields the in-process rows exactly."""
    assert _dask_rows(tmp_path, processes=False) == reference


def test_dask_process_workers_give_the_same_rows(tmp_path, reference):
    """Dask LocalCluster with 2 worker processes, reached by its scheduler address, yields
    the in-process rows exactly."""
    cloudpickle = pytest.importorskip("cloudpickle")
    cloudpickle.register_pickle_by_value(study_fakes)  # workers cannot import tests/
    try:
        assert _dask_rows(tmp_path, processes=True) == reference
    finally:
        cloudpickle.unregister_pickle_by_value(study_fakes)
