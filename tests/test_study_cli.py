"""The `study` subcommand: exit statuses, dry run, resume (with a fake model)."""

from __future__ import annotations

import argparse
import os

import pytest
import study_fakes
from study_fakes import BASIC, write_study

import tdsim.cli
import tdsim.study.runner
from tdsim.study.cli import STUDY_ARGS, add_study_parser, cmd_study


@pytest.fixture(autouse=True)
def fake_model(monkeypatch):
    monkeypatch.setattr(tdsim.study.runner, "resolve_scenario", study_fakes.resolve)
    monkeypatch.setattr(tdsim.study.runner, "run_model", study_fakes.normal_runner)


def tdsim_main(argv):
    """A stand-in for tdsim.cli: registers the subcommand the way the main CLI does."""
    parser = argparse.ArgumentParser(prog="tdsim")
    add_study_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_bad_study_exits_2_with_one_line(tmp_path, capsys):
    """A study error is one stderr line naming file and key, and exit status 2."""
    path = write_study(tmp_path, BASIC.replace("count = 4", "count = -1"))
    assert tdsim_main(["study", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == f"tdsim: error: {path}: replications.count: must be >= 1\n"


def test_dry_run_lists_points_and_run_count(tmp_path, capsys):
    """--dry-run prints the design and 3 points x 3 strategies x 4 replications = 36."""
    path = write_study(tmp_path, BASIC)
    assert tdsim_main(["study", str(path), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "design points: 3" in out
    assert "x=2" in out
    assert "= 36" in out
    assert not (tmp_path / "o").exists()


def test_run_then_resume(tmp_path, capsys):
    """A study runs (--no-plots: no figures), refuses to overwrite itself, and resumes with
    nothing left to run."""
    path = write_study(tmp_path, BASIC)
    argv = ["study", str(path), "--jobs", "1", "--out", str(tmp_path / "o"), "--no-plots"]
    assert tdsim_main(argv) == 0
    assert (tmp_path / "o" / "report.md").is_file()
    assert not (tmp_path / "o" / "plots").exists()
    assert "![" not in (tmp_path / "o" / "report.md").read_text()
    assert "36 runs (36 run now, 0 reused, 0 failed)" in capsys.readouterr().out
    assert tdsim_main(argv) == 2
    assert "--resume" in capsys.readouterr().err
    assert tdsim_main([*argv, "--resume"]) == 0
    assert "(0 run now, 36 reused" in capsys.readouterr().out


def test_failed_runs_exit_1_after_writing_outputs(tmp_path, monkeypatch, capsys):
    """Failures are reported (exit 1) but the study completes and writes its report."""
    monkeypatch.setattr(tdsim.study.runner, "run_model", study_fakes.failing_runner)
    path = write_study(tmp_path, BASIC)
    assert tdsim_main(["study", str(path), "-j", "2", "--out", str(tmp_path / "o")]) == 1
    assert (tmp_path / "o" / "report.md").is_file()
    assert "3 runs failed; first: RuntimeError: modelled failure" in capsys.readouterr().err


def test_scheduler_without_dask_executor_is_an_input_error(tmp_path, capsys):
    """--scheduler only makes sense with --executor dask."""
    path = write_study(tmp_path, BASIC)
    assert tdsim_main(["study", str(path), "--scheduler", "tcp://x:1"]) == 2


def test_main_cli_registers_study_with_its_subcommand_registry(tmp_path, monkeypatch, capsys):
    """`subcommand(*STUDY_ARGS)(cmd_study)` in tdsim.cli gives `tdsim study ...`."""
    monkeypatch.setattr(tdsim.cli, "_COMMANDS", dict(tdsim.cli._COMMANDS))
    tdsim.cli.subcommand(*STUDY_ARGS)(cmd_study)
    path = write_study(tmp_path, BASIC)
    assert tdsim.cli.main(["study", str(path), "--dry-run", "--log-level", "error"]) == 0
    assert "= 36" in capsys.readouterr().out
    assert "sweeps, replications" in tdsim.cli.build_parser().format_help()


def _no_runs(monkeypatch):
    counting = study_fakes.CountingRunner()
    monkeypatch.setattr(tdsim.study.runner, "run_model", counting)
    return counting


@pytest.mark.parametrize(
    ("edit", "key_path", "fragment"),
    [
        (('"eager"]', '"eagre"]'), "strategies[2]", "unknown strategy 'eagre'"),
        (('"wrmsr.total/exits"]', '"wrmsr.totl/exits"]'), "metrics[2]",
         "did you mean 'wrmsr.total'?"),
    ],
)
def test_bad_strategy_or_metric_fails_before_any_run(tmp_path, monkeypatch, capsys, edit,
                                                      key_path, fragment):
    """An unknown strategy or a mistyped metric: one line naming the study file and the key,
    exit 2, no run and no output directory, with or without --dry-run."""
    counting = _no_runs(monkeypatch)
    path = write_study(tmp_path, BASIC.replace(*edit))
    for extra in ([], ["--dry-run"]):
        assert tdsim_main(["study", str(path), "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"tdsim: error: {path}: {key_path}: ")
        assert fragment in err
        assert err.count("\n") == 1
    assert counting.calls == []
    assert not (tmp_path / "o").exists()


def test_unwritable_out_fails_before_any_run(tmp_path, monkeypatch, capsys):
    """--out under a regular file cannot be created: one line, exit 2, nothing run."""
    counting = _no_runs(monkeypatch)
    path = write_study(tmp_path, BASIC)
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "o"
    assert tdsim_main(["study", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"tdsim: error: {path}: --out: cannot write to {out}: {tmp_path / 'file'} " \
                  "is not a directory\n"
    assert counting.calls == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_out_fails_before_any_run(tmp_path, monkeypatch, capsys):
    """A directory without write permission: exit 2 before the first run."""
    counting = _no_runs(monkeypatch)
    path = write_study(tmp_path, BASIC)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert tdsim_main(["study", str(path), "--out", str(locked / "o")]) == 2
    assert "--out: cannot write to" in capsys.readouterr().err
    assert counting.calls == []


def test_factor_the_scenario_refuses_names_the_study_file_and_level(tmp_path, monkeypatch,
                                                                    capsys):
    """A level the scenario refuses is reported against the study file's factor key."""
    monkeypatch.setattr(tdsim.study.runner, "resolve_scenario",
                        study_fakes.resolve_rejecting("x", 2))
    counting = _no_runs(monkeypatch)
    path = write_study(tmp_path, BASIC)
    assert tdsim_main(["study", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tdsim: error: {path}: factors.x[2]: 2: the scenario refuses it: ")
    assert counting.calls == []


def test_progress_lines_go_to_stderr_when_it_is_not_a_terminal(tmp_path, capsys):
    """Without a terminal, stderr gets plain progress lines with a whole-study ETA."""
    path = write_study(tmp_path, BASIC)
    assert tdsim_main(["study", str(path), "--jobs", "1", "--out", str(tmp_path / "o"),
                       "--no-plots"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("study: 36/36 runs (100%), 0 failed, ")
    assert err[-1].endswith("left for the whole study")


def test_parquet_flag_writes_the_runs_as_parquet(tmp_path):
    """--parquet adds OUT/results.parquet with one row per run."""
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path = write_study(tmp_path, BASIC)
    out = tmp_path / "o"
    assert tdsim_main(["study", str(path), "-j", "1", "--out", str(out), "--no-plots",
                       "--parquet"]) == 0
    assert len(pd.read_parquet(out / "results.parquet")) == 36
