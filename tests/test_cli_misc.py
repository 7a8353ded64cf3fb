"""The conveniences: diff, init, completion, exit statuses in --help, the work estimate, and a
start-up that does not load the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tdsim import cli
from tdsim.cli_estimate import TOLERANCE, estimate
from tdsim.cli_init import EXAMPLES
from tdsim.scenario import load_scenario

ROOT = Path(__file__).parents[1]
SMALL = "[sim]\nduration_us = 300\nseed = {seed}\n[[vm]]\nvcpus = 2\n"


# --- diff -------------------------------------------------------------------------------------


def result_doc(tmp_path: Path, name: str, *argv: str, text: str = SMALL.format(seed=1)) -> str:
    scenario = tmp_path / f"{name}.toml"
    scenario.write_text(text)
    out = tmp_path / f"{name}.json"
    assert cli.main(["run", str(scenario), "--quiet", "--json", str(out), *argv]) in (0, 1)
    return str(out)


def test_diff_of_a_document_with_itself_is_empty(tmp_path, capsys):
    """Exit status 0 and a line saying so when nothing differs."""
    a = result_doc(tmp_path, "a")
    assert cli.main(["diff", a, a]) == 0
    assert "no differences in metrics, violations or scenario" in capsys.readouterr().out


def test_diff_shows_metric_deltas_and_scenario_changes(tmp_path, capsys):
    """Another seed: changed metrics with delta and relative change, the scenario key that
    differs; exit status 1."""
    a = result_doc(tmp_path, "a")
    b = result_doc(tmp_path, "b", "--seed", "2")
    assert cli.main(["diff", a, b, "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    [run] = doc["runs"]
    assert {"key": "sim.seed", "a": 1, "b": 2} in run["scenario"]
    exits = next(m for m in run["metrics"] if m["metric"] == "exits")
    assert exits["delta"] == exits["b"] - exits["a"]
    assert exits["rel"] == pytest.approx(exits["delta"] / exits["a"])
    assert cli.main(["diff", a, b]) == 1
    out = capsys.readouterr().out
    assert "Scenario differences" in out
    assert "sim.seed" in out
    assert "Metrics that differ" in out
    assert "%" in out


def test_diff_lists_violations_added_and_removed(tmp_path, capsys):
    """A strategy that violates against one that does not: the violations only B has."""
    zero_step = str(ROOT / "scenarios" / "aborts_zero_step.toml")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    common = ["--set", "kvm.compare=[]", "--set", "sim.duration_us=3000", "--quiet"]
    cli.main(["run", zero_step, *common, "--json", str(a)])
    cli.main(["run", zero_step, *common, "--set", "kvm.host_state=v6.16", "--json", str(b)])
    assert cli.main(["diff", str(a), str(b), "--format", "json"]) == 1
    [run] = json.loads(capsys.readouterr().out)["runs"]
    assert run["violations_added"]
    assert not run["violations_removed"]
    assert {v["invariant"] for v in run["violations_added"]} == {"uret_cache_mismatch"}
    assert cli.main(["diff", str(b), str(a)]) == 1
    assert "Violations only in A (removed)" in capsys.readouterr().out


def test_diff_matches_comparisons_by_strategy(tmp_path, capsys):
    """Two comparison documents are compared strategy by strategy; a strategy on one side
    only is named."""
    a = result_doc(tmp_path, "a", "--compare", "current,eager")
    b = result_doc(tmp_path, "b", "--compare", "current,v6.16")
    assert cli.main(["diff", a, b, "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in doc["runs"]] == ["[current]"]
    assert doc["runs"][0]["same"]
    assert doc["only_a"] == ["[eager]"]
    assert doc["only_b"] == ["[v6.16]"]


# --- init -------------------------------------------------------------------------------------


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_each_starter_is_written_commented_valid_and_meets_its_expectations(
        tmp_path, capsys, monkeypatch, example):
    """`tdsim init --example NAME` writes a scenario that starts with its question, explains
    its keys, validates, and passes `tdsim check`."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "--example", example]) == 0
    text = (tmp_path / "scenario.toml").read_text()
    assert text.startswith("# Question:")
    assert sum(1 for line in text.splitlines() if "#" in line) >= 8
    assert cli.main(["validate", "scenario.toml"]) == 0
    assert cli.main(["check", "scenario.toml"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("ok   scenario.toml")


def test_init_lists_starters_prints_to_stdout_and_overwrites_only_when_forced(tmp_path, capsys,
                                                                               monkeypatch):
    """--example list; '-' for stdout; an existing file needs --force."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "--example", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("basic ")
    assert cli.main(["init", "-", "--example", "compare"]) == 0
    assert 'compare = ["current", "v6.16", "eager"]' in capsys.readouterr().out
    (tmp_path / "s.toml").write_text("mine")
    assert cli.main(["init", "s.toml"]) == 2
    assert (tmp_path / "s.toml").read_text() == "mine"
    assert cli.main(["init", "s.toml", "--force"]) == 0
    assert (tmp_path / "s.toml").read_text().startswith("# Question:")


# --- completion, help, start-up ---------------------------------------------------------------


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_knows_commands_options_and_files(capsys, shell):
    """The script completes subcommands, their options and choices, and files."""
    assert cli.main(["completion", shell]) == 0
    script = capsys.readouterr().out
    for word in ("run", "validate", "diff", "init", "study", "--allow-long", "--format",
                 "csv"):
        assert word in script
    assert ("_shtab_compgen_files" if shell == "bash" else "_files") in script


@pytest.mark.parametrize("command", list(cli._COMMANDS))
def test_every_subcommand_help_lists_exit_statuses(command, capsys):
    """`tdsim COMMAND --help` ends with the exit statuses it can return."""
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    assert "exit status:" in help_text
    for code in ("0 ", "2 ", "3 ", "130 "):
        assert f"\n  {code}" in help_text


def test_help_does_not_load_the_model_or_rich():
    """`tdsim --help` imports neither the model, SimPy, rich nor structlog (what made it
    slow); the time itself is measured, not asserted (see the CHANGELOG)."""
    code = ("import sys; from tdsim import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('tdsim.sim', 'simpy', 'rich', 'structlog', "
            "'tdsim.scenario') if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stderr.strip() == "[]"
    assert "usage: tdsim" in proc.stdout


def test_public_api_still_importable_from_the_package():
    """`tdsim.load_scenario`, `tdsim.run`, `tdsim.Result` load on first use."""
    import tdsim

    scenario = tdsim.load_scenario(ROOT / "scenarios" / "baseline.toml",
                                   overrides=["sim.duration_us=200"])
    result = tdsim.run(scenario)
    assert isinstance(result, tdsim.Result)
    assert isinstance(scenario, tdsim.Scenario)
    with pytest.raises(AttributeError):
        tdsim.nothing_here  # noqa: B018


# --- the work estimate ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["baseline", "irq_ipi_shootdown", "aborts_fatal_exits",
                                  "mixed_td_vmx", "ghci_every_subfunction",
                                  "strategies_io_contention", "irq_overcommit_migration"])
def test_estimate_is_within_its_tolerance_of_the_real_event_count(name):
    """The estimate of SimPy events is within a factor TOLERANCE of a real run's."""
    from tdsim.sim import run

    scenario = load_scenario(ROOT / "scenarios" / f"{name}.toml", ["kvm.compare=[]"])
    est = estimate(scenario.data)
    real = run(scenario).perf["sim_events"]
    assert 1 / TOLERANCE <= est.events / real <= TOLERANCE


def test_estimate_scales_with_duration_and_names_what_drives_it():
    """Ten times the duration is ten times the events; a huge host is named by host.cpus."""
    base = load_scenario(ROOT / "scenarios" / "baseline.toml")
    longer = base.replace({"sim.duration_us": 200_000})
    assert estimate(longer.data).events == pytest.approx(10 * estimate(base.data).events)
    assert estimate(base.data).key == "sim.duration_us"
    big = base.replace({"host.cpus": 10**9})
    assert estimate(big.data).key == "host.cpus"
    assert estimate(base.data, traced=True).memory_bytes > estimate(base.data).memory_bytes
