"""The warm-up aid: per-window series, MSER-5, and a report that says when it cannot."""

from __future__ import annotations

import pytest
from study_fakes import BASIC, normal_runner, resolve, warming_runner, write_study

from tdsim.study.execute import RunTask, model_has_series, run_model
from tdsim.study.runner import run_study
from tdsim.study.spec import load_study
from tdsim.study.warmup import mser

SERIES = BASIC.replace("[replications]", '[series]\nmetrics = ["exits", '
                       '"exits.reason.CPUID/exits"]\nwindow_us = 100\n\n[replications]')


def test_mser5_cuts_a_transient():
    """10 windows at 50 then 40 windows alternating 10/12: truncate the first 10."""
    series = [50.0] * 10 + [10.0, 12.0] * 20
    assert mser(series) == 10


def test_mser5_keeps_a_stationary_series():
    """No transient, nothing to cut (well within the first batch)."""
    series = [10.0, 12.0, 11.0, 9.0, 13.0] * 10
    assert mser(series) <= 5


def test_report_suggests_a_warm_up_from_the_series(tmp_path):
    """Rows keep the asked series; the report suggests the MSER-5 truncation (the fake
    transient lasts 12 of 60 windows of 100 us: about 1,000-1,500 us)."""
    study = load_study(write_study(tmp_path, SERIES))
    result = run_study(study, tmp_path / "out", run_one=warming_runner, resolver=resolve,
                       plots=False)
    assert set(result.rows[0]["series"]) == {"exits", "exits.reason.CPUID"}
    report = (tmp_path / "out" / "report.md").read_text()
    section = report.split("## Warm-up (MSER-5)")[1].split("## ")[0]
    line = next(x for x in section.splitlines() if x.startswith("Suggested `warmup_us`"))
    suggested = float(line.split("= ")[1].split(" ")[0])
    assert 1000 <= suggested <= 1500
    assert "**the study's warm-up (0 µs) is shorter**" in line


def test_without_series_the_analysis_is_skipped_and_said(tmp_path):
    """A model without the series hook: the study runs, the report says why no MSER."""
    study = load_study(write_study(tmp_path, SERIES))
    run_study(study, tmp_path / "out", run_one=normal_runner, resolver=resolve, plots=False)
    section = (tmp_path / "out" / "report.md").read_text().split("## Warm-up (MSER-5)")[1]
    assert section.strip().startswith("Skipped: the runs carry no per-window series.")


def test_real_model_runs_with_a_window_request_whatever_its_hook(tmp_path):
    """run_model asks for windows only when tdsim.sim.run takes windows_ns; either way the
    run works, and series appear exactly when the hook exists."""
    from tdsim.scenario import load_scenario

    data = load_scenario(
        __import__("pathlib").Path(__file__).parent.parent / "studies/base/one_td.toml",
        {"sim.duration_us": 500.0}).data
    task = RunTask(0, (), "current", 0, 1, data, "x", window_ns=100_000,
                   series_terms=("exits",))
    out = run_model(task)
    assert out["metrics"]["exits"] > 0
    assert ("series" in out) == model_has_series()
    if model_has_series():
        assert len(out["series"]["exits"]) == pytest.approx(5, abs=1)
