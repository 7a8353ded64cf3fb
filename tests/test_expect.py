"""Scenario expectations and trajectory fingerprints (tdsim.expect, ``tdsim check``)."""

import dataclasses
from pathlib import Path

import pytest

import tdsim.build
from tdsim.cli import main
from tdsim.expect import (
    check_expectations,
    check_scenario,
    first_divergence,
    has_expectations,
    trajectory,
)
from tdsim.scenario import load_scenario, scenario_from_dict
from tdsim.sim import run
from tdsim.trace import Tracer

SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios").glob("*.toml"))
WITH_EXPECT = [p for p in SCENARIOS if has_expectations(load_scenario(p).data)]


@pytest.mark.parametrize("path", WITH_EXPECT, ids=[p.name for p in WITH_EXPECT])
def test_shipped_scenario_meets_its_expectations(path):
    """Every shipped scenario with an [expect] table meets it and matches its fingerprint."""
    report = check_scenario(load_scenario(path))
    assert report.ok, report.render()


def tiny(**expect):
    """One pinned vCPU doing fixed 10 us CPUID round trips for 30 us (two TD exits)."""
    return {
        "sim": {"duration_us": 30, "seed": 1},
        "host": {"cpus": 2, "tick_hz": 0},
        "vm": [{"vcpus": 1, "pin": [1],
                "workload": {"compute_us": 10, "compute_dist": "fixed", "mix": {"cpuid": 1.0}}}],
        "expect": expect,
    }


def test_met_expectations_give_no_lines():
    """Exact values and bounds that the run meets report nothing."""
    s = scenario_from_dict(tiny(metrics={"exits": 2, "tdvmcall.cpuid": {"min": 1, "max": 2},
                                         "late_abort": {"max": 0}}, violations_none=True))
    assert check_expectations(s.data["expect"], run(s).metrics) == []


def test_broken_expectations_are_each_one_readable_line():
    """Each broken expectation is one line saying what was expected and what the run gave."""
    s = scenario_from_dict(tiny(metrics={"exits": 3, "wrmsr.total": {"min": 10},
                                         "late_abort": {"min": 1, "max": 2}},
                                violations_must=["host_state_leak"]))
    assert check_expectations(s.data["expect"], run(s).metrics) == [
        "metric exits: expected = 3, got 2",
        "metric wrmsr.total: expected >= 10, got 6",  # prepare's 4, 2 IA32_XSS restores
        "metric late_abort: expected in [1, 2], got 0",
        "violations.host_state_leak: expected at least 1, got 0",
    ]


def test_unknown_invariant_name_is_reported():
    """A misspelt oracle name in violations_must_not fails instead of passing silently (the
    loader refuses it; an expectation table built by hand still reports it)."""
    from tdsim.scenario import ScenarioError

    with pytest.raises(ScenarioError, match="unknown invariant 'host_state_leek'"):
        scenario_from_dict(tiny(violations_must_not=["host_state_leek"]))
    s = scenario_from_dict(tiny())
    expect = dict(s.data["expect"], violations_must_not=["host_state_leek"])
    lines = check_expectations(expect, run(s).metrics)
    assert len(lines) == 1
    assert lines[0].startswith("invariant 'host_state_leek' is unknown")


def test_bad_bound_is_a_scenario_error():
    """A bound table with an unknown key is rejected when the scenario loads."""
    from tdsim.scenario import ScenarioError

    with pytest.raises(ScenarioError, match=r"expect\.metrics\.exits: expected a number or"):
        scenario_from_dict(tiny(metrics={"exits": {"minimum": 1}}))


def test_check_cli_fails_with_a_diff(tmp_path, capsys):
    """`tdsim check` exits 1 and prints the broken expectation under the scenario's name."""
    path = tmp_path / "broken.toml"
    path.write_text("""
[sim]
duration_us = 30
[host]
cpus = 2
tick_hz = 0
[[vm]]
pin = [1]
[vm.workload]
compute_us = 10
compute_dist = "fixed"
[expect.metrics]
exits = { min = 5 }
""")
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert out == (f"FAIL {path} (seed 1): 1 expectation(s); no stored fingerprint\n"
                   "  metric exits: expected >= 5, got 2\n")


def _slow_exit_handling(monkeypatch):
    """A deliberate model change: 1 ns more work after every TD exit."""
    ops = tdsim.build.TDX_X86_OPS

    def patched(vcpu, cpu, fastpath):
        cpu.acc += 1
        return ops.handle_exit(vcpu, cpu, fastpath)

    monkeypatch.setattr(tdsim.build, "TDX_X86_OPS",
                        dataclasses.replace(ops, handle_exit=patched))


def test_model_change_names_the_first_divergent_event(tmp_path, monkeypatch):
    """After a 1 ns change to exit handling the stored fingerprint no longer matches, and the
    report names the second TD entry's guest slice as the first divergent event."""
    path = tmp_path / "tiny.toml"
    path.write_text('[sim]\nduration_us = 30\n[host]\ncpus = 2\ntick_hz = 0\n'
                    '[[vm]]\npin = [1]\n[vm.workload]\ncompute_us = 10\n'
                    'compute_dist = "fixed"\n')
    scenario = load_scenario(path)
    assert check_scenario(scenario, update_fingerprints=True).ok
    assert check_scenario(scenario).notes[-1] == "fingerprint matches (30 events)"
    _slow_exit_handling(monkeypatch)
    report = check_scenario(scenario)
    assert not report.ok
    text = "\n".join(report.failures)
    assert "first divergent event: #22 (stored run has 30 events, this run 30)" in text
    assert "stored: 18045 cpu_state cpu1 td0.vcpu0 what=guest thread=td0.vcpu0" in text
    assert "now:    18046 cpu_state cpu1 td0.vcpu0 what=guest thread=td0.vcpu0" in text
    assert "#21 16270 cpu_state cpu1 td0.vcpu0 what=kvm thread=td0.vcpu0" in text


def test_update_fingerprints_accepts_the_change(tmp_path, monkeypatch):
    """--update-fingerprints stores the new trajectory, which then matches."""
    path = tmp_path / "tiny.toml"
    path.write_text('[sim]\nduration_us = 30\n[host]\ntick_hz = 0\n')
    assert main(["check", "--update-fingerprints", str(path)]) == 0
    _slow_exit_handling(monkeypatch)
    assert main(["check", str(path)]) == 1
    assert main(["check", "--update-fingerprints", str(path)]) == 0
    assert main(["check", str(path)]) == 0


def test_divergence_when_one_run_is_a_prefix():
    """A run that stops early diverges where it ends; its side shows (ends)."""
    report = first_divergence(["1 a", "2 b", "3 c"], ["1 a", "2 b"])
    assert report[0] == "first divergent event: #2 (stored run has 3 events, this run 2)"
    assert report[-1] == "    (ends)"


def test_trajectory_is_time_ordered_and_deterministic():
    """Two runs of one scenario give the same canonical lines, in time order."""
    s = scenario_from_dict(tiny())
    runs = []
    for _ in range(2):
        tracer = Tracer()
        run(s, tracer=tracer)
        runs.append(trajectory(tracer.events))
    assert runs[0] == runs[1]
    times = [int(line.split()[0]) for line in runs[0]]
    assert times == sorted(times)


def test_tracing_does_not_change_the_run():
    """A traced run has the same metrics as an untraced one (the fingerprint's premise)."""
    s = load_scenario(Path(__file__).parent.parent / "scenarios" / "baseline.toml")
    assert run(s, tracer=Tracer()).metrics == run(s).metrics


def test_each_compared_strategy_meets_its_own_section():
    """With kvm.compare every strategy is run; a strategy's section adds to [expect] and a
    broken one is reported under the strategy's name."""
    d = tiny(violations_none=True,
             strategy={"eager": {"metrics": {"wrmsr.total": {"max": 4}}},
                       "current": {"metrics": {"wrmsr.total": 6}}})
    d["kvm"] = {"compare": ["current", "eager"]}
    report = check_scenario(scenario_from_dict(d, name="<cmp>"), fingerprints=False)
    assert report.notes == ["4 expectation(s)", "2 strategies"]
    assert len(report.failures) == 1
    assert report.failures[0].startswith("[eager] metric wrmsr.total: expected <= 4, got ")


def test_section_for_a_strategy_not_run_fails():
    """[expect.strategy.X] for a strategy the scenario does not run is reported."""
    s = scenario_from_dict(tiny(strategy={"eager": {"violations_none": True}}), name="<x>")
    report = check_scenario(s, fingerprints=False)
    assert report.failures == ["expect.strategy.eager: 'eager' is not run (strategies: current)"]


def test_an_undeclared_violation_fails_the_check(tmp_path):
    """A run that records a violation its [expect] does not declare fails `tdsim check`,
    even with no expectations at all (tdsim run would report it); declared, it passes."""
    from tdsim.expect import undeclared_violations

    metrics = {"violations.uret_cache_mismatch": 3, "exits": 10}
    empty = {"metrics": {}, "violations_must": [], "violations_must_not": [],
             "violations_none": False}
    [line] = undeclared_violations([empty], metrics)
    assert line.startswith("violations.uret_cache_mismatch: 3 recorded but not expected")
    declared = dict(empty, violations_must=["uret_cache_mismatch"])
    assert undeclared_violations([empty, declared], metrics) == []


def test_every_shipped_scenario_is_a_regression_test():
    """Every shipped scenario states expectations, so `tdsim check scenarios/*.toml` never
    answers "no expectations" for a scenario whose `tdsim run` reports findings."""
    assert WITH_EXPECT == SCENARIOS
