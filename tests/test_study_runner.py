"""Running a study with a fake model: rows, failures, resume after a kill, outputs."""

from __future__ import annotations

import csv
import json

import pytest
from study_fakes import (
    BASIC,
    CountingRunner,
    failing_runner,
    normal_runner,
    resolve,
    violating_runner,
    write_study,
)

from tdsim.study.runner import run_study
from tdsim.study.spec import StudyError, load_study, replication_seed
from tdsim.study.stats import final_count
from tdsim.study.store import ResultStore
from tdsim.study.summary import summarize

N_RUNS = 3 * 3 * 4  # points x strategies x replications in BASIC


def run(study, out, runner=normal_runner, **kw):
    kw.setdefault("write_outputs", False)
    return run_study(study, out, run_one=runner, resolver=resolve, **kw)


def strip(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


@pytest.fixture
def basic(tmp_path):
    return load_study(write_study(tmp_path, BASIC))


def test_rows_come_in_design_order_with_shared_seeds(basic, tmp_path):
    """One row per point x strategy x replication, sorted by design key; seeds shared."""
    result = run(basic, tmp_path / "out")
    got = [(r["point"]["x"], r["strategy"], r["replication"], r["seed"]) for r in result.rows]
    assert got == [(x, s, r, replication_seed(1, r)) for x in (0, 1, 2)
                   for s in ("current", "v6.16", "eager") for r in range(4)]
    assert all(r["status"] == "ok" and r["tdsim_version"] for r in result.rows)
    assert len({r["scenario_sha256"] for r in result.rows}) == N_RUNS


def test_store_holds_every_row_as_json_lines(basic, tmp_path):
    """The store has one parseable line per run, written as runs finish."""
    result = run(basic, tmp_path / "out")
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == N_RUNS
    assert sorted(json.dumps(json.loads(x), sort_keys=True) for x in lines) == sorted(
        json.dumps(r, sort_keys=True) for r in result.rows)


def test_failed_run_is_recorded_and_the_study_goes_on(basic, tmp_path):
    """A run that raises becomes an error row with a one-line error; the rest still run."""
    result = run(basic, tmp_path / "out", failing_runner)
    errors = result.errors
    assert [(e["point"]["x"], e["strategy"], e["replication"]) for e in errors] == [
        (x, "v6.16", 1) for x in (0, 1, 2)]
    assert errors[0]["error"] == "RuntimeError: modelled failure"
    assert "Traceback" in errors[0]["traceback"]
    assert sum(r["status"] == "ok" for r in result.rows) == N_RUNS - 3
    assert result.summary.cells[(0, "v6.16", "exits")].n == 3
    assert result.summary.paired[(0, "v6.16", "exits")].n == 3


def test_violations_are_counted_per_invariant(basic, tmp_path):
    """Violations become metrics `violations` and `violations.<invariant>` plus examples."""
    result = run(basic, tmp_path / "out", violating_runner)
    eager = [r for r in result.rows if r["strategy"] == "eager"]
    assert all(r["metrics"]["violations"] == 1 for r in eager)
    assert all(r["metrics"]["violations.host_state_leak"] == 1 for r in eager)
    assert eager[0]["violation_examples"][0]["detail"] == "stale MSR"
    assert all(r["metrics"]["violations"] == 0 for r in result.rows
               if r["strategy"] != "eager")


def test_existing_store_without_resume_is_refused(basic, tmp_path):
    """A second run into the same directory must say --resume rather than mix studies."""
    run(basic, tmp_path / "out")
    with pytest.raises(StudyError, match="--resume"):
        run(basic, tmp_path / "out")


def test_killed_study_resumes_without_redoing_finished_runs(basic, tmp_path):
    """Killed after 10 runs, a resumed study runs exactly the other 26 and matches a clean
    study row for row."""
    killer = CountingRunner(stop_after=10)
    with pytest.raises(KeyboardInterrupt):
        run(basic, tmp_path / "out", killer)
    finished = set(killer.calls)
    assert len(ResultStore(tmp_path / "out" / "results.jsonl").load()) == 10

    resumer = CountingRunner()
    result = run(basic, tmp_path / "out", resumer, resume=True)
    assert len(resumer.calls) == N_RUNS - 10
    assert finished.isdisjoint(resumer.calls)
    assert (result.ran, result.reused) == (N_RUNS - 10, 10)
    clean = run(basic, tmp_path / "clean")
    assert strip(result.rows) == strip(clean.rows)


def test_resume_skips_a_torn_last_line(basic, tmp_path):
    """A store cut mid-line (kill during a write) keeps its complete rows; the torn one reruns."""
    run(basic, tmp_path / "out")
    store = tmp_path / "out" / "results.jsonl"
    lines = store.read_text().splitlines(keepends=True)
    store.write_text("".join(lines[:7]) + lines[7][:25])

    resumer = CountingRunner()
    result = run(basic, tmp_path / "out", resumer, resume=True)
    assert len(resumer.calls) == N_RUNS - 7
    assert result.skipped_lines == 1
    assert len(ResultStore(store).load()) == N_RUNS


def test_resume_reruns_failed_runs_and_reuses_the_rest(basic, tmp_path):
    """Error rows are retried on --resume; the newest row for a run wins."""
    first = run(basic, tmp_path / "out", failing_runner)
    assert len(first.errors) == 3
    resumer = CountingRunner()
    result = run(basic, tmp_path / "out", resumer, resume=True)
    assert sorted(resumer.calls) == [(x, "v6.16", 1) for x in (0, 1, 2)]
    assert result.errors == []


def test_changed_scenario_reruns_everything(tmp_path):
    """Rows are keyed by the resolved scenario's hash: a new override means new runs."""
    path = write_study(tmp_path, BASIC)
    run(load_study(path), tmp_path / "out")
    path.write_text(BASIC + '\n[overrides]\n"sim.duration_us" = 5\n')
    resumer = CountingRunner()
    result = run(load_study(path), tmp_path / "out", resumer, resume=True)
    assert len(resumer.calls) == N_RUNS
    assert result.stale_rows == N_RUNS


def test_sequential_study_runs_the_count_its_first_stage_asks_for(tmp_path):
    """Two stages: every point's count is final_count() of its first 10 replications'
    paired differences (the quantity compared), and strategies stay paired."""
    body = BASIC.replace("count = 4", "target_rel_halfwidth = 0.004\nmin = 10\nmax = 60\n"
                         'metrics = ["wrmsr.total"]')
    study = load_study(write_study(tmp_path, body))
    result = run(study, tmp_path / "out")
    first = [r for r in result.rows if r["replication"] < 10]
    grew = 0
    for p in study.points():
        ns = {result.summary.cells[(p.index, s, "exits")].n for s in study.strategies}
        assert len(ns) == 1  # strategies stay paired
        stage1 = summarize(study, [r for r in first if r["point_index"] == p.index],
                           only={p.index})
        spreads = [(d.diff.sd, 0.004 * abs(d.baseline.mean)) for d in stage1.differences
                   if d.metric == "wrmsr.total"]
        assert ns.pop() == final_count(10, spreads, study.interval_confidence, 60)
        grew += result.summary.cells[(p.index, "current", "exits")].n > 10
    assert grew  # the test is weak if no point needed a second stage


def test_sequential_study_without_comparison_targets_the_means(tmp_path):
    """One strategy: the count is set by each cell's mean (exits: sd 5 around 50-70)."""
    body = BASIC.replace('strategies = ["current", "v6.16", "eager"]', 'strategies = ["eager"]'
                         ).replace("count = 4", "target_rel_halfwidth = 0.02\nmin = 10\n"
                                   'max = 200\nmetrics = ["exits"]')
    study = load_study(write_study(tmp_path, body))
    result = run(study, tmp_path / "out")
    for p in study.points():
        stage1 = [r for r in result.rows if r["point_index"] == p.index
                  and r["replication"] < 10]
        e = summarize(study, stage1, only={p.index}).cells[(p.index, "eager", "exits")]
        want = final_count(10, [(e.sd, 0.02 * e.mean)], study.interval_confidence, 200)
        assert result.summary.cells[(p.index, "eager", "exits")].n == want > 10


def test_sequential_rule_stops_at_max_when_target_is_unreachable(tmp_path):
    """The metric `kvm_bug` is always 0 (met); exits at a 0.1% target hits max."""
    body = BASIC.replace('"wrmsr.total/exits"]', '"kvm_bug"]').replace(
        "count = 4", "target_rel_halfwidth = 0.001\nmin = 10\nmax = 12")
    result = run(load_study(write_study(tmp_path, body)), tmp_path / "out")
    assert {e.n for e in result.summary.cells.values()} == {12}


def test_outputs_are_written(basic, tmp_path):
    """CSV tables, design, plots and a report that states the question."""
    result = run(basic, tmp_path / "out", failing_runner, write_outputs=True)
    out = tmp_path / "out"
    for name in ("results.csv", "summary.csv", "paired.csv", "design.json", "report.md"):
        assert (out / name).is_file(), name
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_RUNS
    assert {"x", "strategy", "exits", "wrmsr.total", "status"} <= set(rows[0])
    with (out / "summary.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3 * 3 * 3  # points x strategies x metrics
    with (out / "paired.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3 * 2 * 3
    report = (out / "report.md").read_text()
    assert "Does x move exits?" in report
    assert "## Failed runs" in report
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert "wrmsr_total_per_exits__vs__x.png" in pngs
    assert "diff_exits__vs__x.png" in pngs
    assert all(f"plots/{p}" in report for p in pngs)
    design = json.loads((out / "design.json").read_text())
    assert design["points"][2]["factors"] == {"x": 2}
    assert design["points"][2]["scenario"]["overrides"]["kvm.host_state"] == "current"
    svgs = sorted(p.name for p in (out / "plots").glob("*.svg"))
    assert [p.removesuffix(".svg") for p in svgs] == [p.removesuffix(".png") for p in pngs]
    assert len(result.files) == 5 + len(pngs) + len(svgs)  # csv x3, design, report, plots


def test_report_lists_violations_per_strategy(basic, tmp_path):
    """The report's verdict section names the violating strategy, the invariant, an example."""
    run(basic, tmp_path / "out", violating_runner, write_outputs=True, plots=False)
    report = (tmp_path / "out" / "report.md").read_text()
    section = report.split("## Violations found")[1].split("## ")[0]
    assert "| x=0 | `eager` | 4 of 4 | 4 | host_state_leak 4 |" in section
    assert "stale MSR" in section
    assert "No violations under: `current`, `v6.16`." in section


def test_counter_absent_from_some_runs_is_zero_but_unknown_metric_is_missing(tmp_path):
    """`violations.host_state_leak` appears only under eager, so it is 0 elsewhere; a
    declared metric no run reports is flagged as missing, not silently zero."""
    body = BASIC.replace('"wrmsr.total/exits"]',
                         '"violations.host_state_leak", "late_abort.kick"]')
    study = load_study(write_study(tmp_path, body))
    result = run(study, tmp_path / "out", violating_runner, write_outputs=True, plots=False)
    cells = result.summary.cells
    assert (cells[(0, "current", "violations.host_state_leak")].mean,
            cells[(0, "eager", "violations.host_state_leak")].mean) == (0.0, 1.0)
    assert cells[(0, "current", "late_abort.kick")].n == 0
    assert result.summary.missing == {"late_abort.kick": N_RUNS}
    assert "**Missing** from 36 successful runs" in (tmp_path / "out" / "report.md").read_text()


def test_sequential_rule_gives_up_on_a_failing_point(tmp_path):
    """v6.16 replication 1 always fails: no point grows past its first stage."""
    body = BASIC.replace("count = 4", "target_rel_halfwidth = 0.01\nmin = 10\nmax = 40")
    result = run(load_study(write_study(tmp_path, body)), tmp_path / "out", failing_runner)
    assert max(r["replication"] for r in result.rows) == 9


def test_one_categorical_dimension_gets_a_strategy_by_level_matrix(tmp_path):
    """A verdict-matrix-shaped study (named lockstep with labels) gets matrix_<metric>.png."""
    body = BASIC.replace("[factors]\nx = [0, 1, 2]", '[[lockstep]]\nname = "abort kind"\n'
                         'labels = ["kick", "zap"]\nx = [0, 1]\n"f.zap" = [0, 1]')
    result = run(load_study(write_study(tmp_path, body)), tmp_path / "out", violating_runner,
                 write_outputs=True)
    names = {p.name for p in result.files}
    assert {"matrix_exits.png", "exits__vs__abort_kind.png"} <= names
    assert "| abort kind=zap | `eager` | 4 of 4 |" in (tmp_path / "out" / "report.md").read_text()
