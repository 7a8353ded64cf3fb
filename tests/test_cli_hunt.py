"""``tdsim hunt`` on the command line: exit statuses, the reproducer it writes (which `tdsim
run` and `tdsim check` take as they are), the coverage it reports, one-line bad input, and
hunting from a study file.  Every hunt here is bounded by --max-runs (derandomized)."""

from pathlib import Path

import pytest

from tdsim.cli import main

ROOT = Path(__file__).parents[1]
GENERIC = str(ROOT / "scenarios" / "aborts_cost_with.toml")


def test_a_counterexample_is_written_explained_and_reproducible(tmp_path, capsys):
    """Exit 1; the reproducer is a scenario that `tdsim run` shows breaking the oracle and
    `tdsim check` passes."""
    out = tmp_path / "repro.toml"
    assert main(["hunt", GENERIC, "--strategy", "v6.16", "--max-runs", "400",
                 "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "found uret_cache_mismatch" in printed
    assert f"reproducer: {out}" in printed
    assert "uret_cache_mismatch breaks" in printed
    text = out.read_text()
    assert text.startswith("# Question: under kvm.host_state = \"v6.16\"")
    assert "[schedule]" in text
    assert main(["run", str(out)]) == 1
    assert "uret_cache_mismatch" in capsys.readouterr().out
    assert main(["check", str(out)]) == 0


def test_no_counterexample_reports_the_coverage(tmp_path, capsys):
    """Exit 0: no reproducer, the coverage table and the share of the space tried."""
    out = tmp_path / "repro.toml"
    assert main(["hunt", GENERIC, "--strategy", "current", "--mode", "exhaustive",
                 "--depth", "1", "--entries", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no counterexample in the whole space" in printed
    assert "coverage:" in printed
    assert "exhaustive: 124 of 124 schedules tried (100.0%)" in printed
    assert not out.exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["--oracle", "uret_cache_mismatc"], "--oracle: uret_cache_mismatc: not an oracle or "
                                         "invariant tdsim checks (did you mean"),
    (["--strategy", "nope"], "kvm.host_state: unknown strategy 'nope'"),
    (["--budget", "0"], "--budget: 0.0: must be > 0 seconds"),
    (["--strategy", "v6.16", "--out", "/nonexistent/dir/r.toml"],
     "directory /nonexistent/dir does not exist"),
    (["--out", "r.toml"], "--out: r.toml: 3 hunts write 3 reproducers: give a directory"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    """Bad options are one line on stderr and exit 2, before any hunt."""
    assert main(["hunt", GENERIC, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert message in err


def test_a_scripted_scenario_is_bad_input(capsys):
    """Nothing to search in a scenario of scripted guests: exit 2."""
    assert main(["hunt", str(ROOT / "scenarios" / "ghci_every_subfunction.toml")]) == 2
    assert "scripted program" in capsys.readouterr().err


def test_a_study_hunts_each_strategy(tmp_path, capsys):
    """A study file: its base scenario under each of its strategies, one reproducer each
    found, in --out DIR."""
    (tmp_path / "base.toml").write_text((ROOT / "scenarios" / "aborts_zero_step.toml")
                                        .read_text())
    study = tmp_path / "hunt_study.toml"
    study.write_text('question = "Which strategy breaks under zero-step exits?"\n'
                     'scenario = "base.toml"\nstrategies = ["current", "v6.16"]\n'
                     'metrics = ["exits"]\n[replications]\ncount = 2\n')
    out = tmp_path / "hunts"
    assert main(["hunt", str(study), "--max-runs", "150", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "1 of 2 hunts found a counterexample" in printed
    assert sorted(p.name for p in out.iterdir()) == ["hunt-hunt_study-v6.16.toml"]
