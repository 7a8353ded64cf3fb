"""The `study` subcommand: exit statuses, dry run, resume (with a fake model)."""

from __future__ import annotations

import argparse

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
    """A study runs, refuses to overwrite itself, and resumes with nothing left to run."""
    path = write_study(tmp_path, BASIC)
    argv = ["study", str(path), "--jobs", "1", "--out", str(tmp_path / "o")]
    assert tdsim_main(argv) == 0
    assert (tmp_path / "o" / "report.md").is_file()
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
