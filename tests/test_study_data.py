"""Results as data: one pandas row per run, and the same rows as Parquet."""

from __future__ import annotations

import pytest
from study_fakes import BASIC, failing_runner, resolve, write_study

import tdsim.study
from tdsim.study.runner import run_study
from tdsim.study.spec import load_study

pd = pytest.importorskip("pandas")


@pytest.fixture
def out(tmp_path):
    study = load_study(write_study(tmp_path, BASIC))
    run_study(study, tmp_path / "out", run_one=failing_runner, resolver=resolve,
              write_outputs=False)
    return tmp_path / "out"


def test_load_gives_one_row_per_run_with_factors_provenance_and_metrics(out):
    """36 runs, factor x, run fields, provenance and every metric; failed runs keep NaN."""
    frame = tdsim.study.load(out)
    assert len(frame) == 36
    assert {"x", "strategy", "replication", "seed", "status", "model_sha256", "simpy",
            "exits", "wrmsr.total", "violations"} <= set(frame.columns)
    assert frame.groupby("strategy", observed=True).size().to_dict() == {
        "current": 12, "eager": 12, "v6.16": 12}
    failed = frame[frame["status"] == "error"]
    assert len(failed) == 3
    assert failed["exits"].isna().all()
    ok = frame[frame["status"] == "ok"]
    assert ok["exits"].dtype.kind == "f"
    assert list(frame["replication"][:4]) == [0, 1, 2, 3]


def test_parquet_round_trip_equals_load(out):
    """export_parquet writes OUT/results.parquet; reading it back gives the same table."""
    pytest.importorskip("pyarrow")
    path = tdsim.study.export_parquet(out)
    assert path == out / "results.parquet"
    back = pd.read_parquet(path)
    frame = tdsim.study.load(out)
    pd.testing.assert_frame_equal(back, frame, check_categorical=False)


def test_load_names_a_directory_without_results(tmp_path):
    """A directory that holds no study says so."""
    with pytest.raises(FileNotFoundError, match="no study results"):
        tdsim.study.load(tmp_path)
