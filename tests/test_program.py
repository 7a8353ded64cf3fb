"""Scripted guest programs: checking, loops, program files, recording limits."""

import pytest

from tdsim.scenario import ScenarioError, load_scenario, scenario_from_dict
from tdsim.sim import run


def scenario(program, **workload):
    return scenario_from_dict({
        "sim": {"duration_us": 2000, "seed": 1},
        "host": {"cpus": 2, "tick_hz": 0},
        "vm": [{"vcpus": 1, "pin": [1], "workload": {"program": program, **workload}}],
    }, name="<prog>")


def names(result):
    return [c["name"] for c in result.details["calls"]["td0.vcpu0"]]


def test_unknown_op_is_an_error_naming_the_step():
    """A misspelt op is rejected with its key path."""
    with pytest.raises(ScenarioError, match=r"vm\[0\]\.workload\.program\[1\]\.op: unknown op"):
        scenario([{"op": "cpuid"}, {"op": "cpuidd"}])


def test_unknown_sub_function_name_is_an_error():
    """r11 spelt as an unknown name is rejected."""
    with pytest.raises(ScenarioError, match=r"program\[0\]\.r11: unknown sub-function"):
        scenario([{"op": "tdvmcall", "r11": "mapgpa"}])


def test_forever_loop_without_a_call_is_an_error():
    """count = 0 needs a call in the body (else no time would pass)."""
    with pytest.raises(ScenarioError, match="needs a call"):
        scenario([{"op": "loop", "count": 0, "steps": [{"op": "compute", "us": 1}]}])


def test_loop_runs_its_body_count_times():
    """A loop of 3 around two calls, then a last call: 7 calls in order."""
    r = run(scenario([{"op": "loop", "count": 3, "steps": [
        {"op": "cpuid", "name": "a"}, {"op": "compute", "ns": 100},
        {"op": "rdmsr", "index": 0x1A0, "name": "b"}]}, {"op": "cpuid", "name": "c"}]))
    assert names(r) == ["a", "b"] * 3 + ["c"]


def test_nested_loops_multiply():
    """A loop of 2 inside a loop of 2 runs its call 4 times."""
    r = run(scenario([{"op": "loop", "count": 2, "steps": [
        {"op": "loop", "count": 2, "steps": [{"op": "cpuid", "name": "x"}]}]}]))
    assert names(r) == ["x"] * 4


def test_compute_delays_the_next_call_by_its_time():
    """5 us of compute between two calls moves the second exit by exactly 5 us."""
    a = run(scenario([{"op": "cpuid"}, {"op": "cpuid"}])).details["calls"]["td0.vcpu0"]
    b = run(scenario([{"op": "cpuid"}, {"op": "compute", "us": 5}, {"op": "cpuid"}]))
    b = b.details["calls"]["td0.vcpu0"]
    assert b[1]["t_ns"] - a[1]["t_ns"] == 5000


def test_the_guest_parks_in_hlt_after_its_program():
    """After the last step the vCPU halts with interrupts blocked; that HLT is not recorded."""
    r = run(scenario([{"op": "cpuid"}]))
    assert names(r) == ["cpuid"]
    assert r.metrics["tdvmcall.hlt"] == 1
    assert r.metrics["halt_block"] == 1


def test_record_calls_limits_the_records_not_the_calls():
    """record_calls = 2: two records, all five calls still run."""
    r = run(scenario([{"op": "loop", "count": 5, "steps": [{"op": "cpuid"}]}],
                     record_calls=2))
    assert len(names(r)) == 2
    assert r.metrics["tdvmcall.cpuid"] == 5


def test_program_file_is_inlined_relative_to_the_scenario(tmp_path):
    """program_file is read relative to the scenario and becomes `program`."""
    (tmp_path / "p.toml").write_text('program = [{op = "cpuid", name = "from-file"}]\n')
    (tmp_path / "s.toml").write_text('[[vm]]\n[vm.workload]\nprogram_file = "p.toml"\n')
    s = load_scenario(tmp_path / "s.toml")
    wl = s.data["vm"][0]["workload"]
    assert wl["program"] == [{"op": "cpuid", "name": "from-file"}]
    assert wl["program_file"] is None
    assert s.replace({"sim.seed": 2}).data["vm"][0]["workload"]["program"] == wl["program"]


def test_program_and_program_file_together_is_an_error(tmp_path):
    """Only one of the two may be set."""
    (tmp_path / "p.toml").write_text('program = [{op = "cpuid"}]\n')
    (tmp_path / "s.toml").write_text('[[vm]]\n[vm.workload]\nprogram_file = "p.toml"\n'
                                     'program = [{op = "cpuid"}]\n')
    with pytest.raises(ScenarioError, match="not both"):
        load_scenario(tmp_path / "s.toml")


def test_missing_program_file_is_an_error(tmp_path):
    """A program file that cannot be read is a one-line error on program_file."""
    (tmp_path / "s.toml").write_text('[[vm]]\n[vm.workload]\nprogram_file = "nope.toml"\n')
    with pytest.raises(ScenarioError, match=r"vm\[0\]\.workload\.program_file"):
        load_scenario(tmp_path / "s.toml")


def test_statistical_workload_has_no_calls_in_the_result():
    """Only scripted guests add the `calls` key to the result document."""
    r = run(scenario_from_dict({"sim": {"duration_us": 200}}, name="<stat>"))
    assert "calls" not in r.to_dict()


def test_vcpus_key_runs_a_step_only_on_the_named_vcpus():
    """A step with vcpus = [1] runs on vCPU 1 only; unfiltered steps run everywhere."""
    r = run(scenario_from_dict({
        "sim": {"duration_us": 500, "seed": 1}, "host": {"cpus": 3, "tick_hz": 0},
        "vm": [{"vcpus": 2, "pin": [1, 2], "workload": {"program": [
            {"op": "cpuid", "name": "all"}, {"op": "cpuid", "name": "one", "vcpus": [1]}]}}],
    }, name="<vcpus>"))
    assert [c["name"] for c in r.details["calls"]["td0.vcpu0"]] == ["all"]
    assert [c["name"] for c in r.details["calls"]["td0.vcpu1"]] == ["all", "one"]


def test_scripted_guest_awaits_its_call_until_kvm_completes_it():
    """`awaiting` is set by the TDCALL and cleared at completion: a completed program ends
    clear; a call that never returns (fatal error, VM stopped) leaves it set."""
    from tdsim.sim import Simulation

    done = Simulation(scenario([{"op": "cpuid"}]))
    done.run()
    assert done.vcpus[0].guest.awaiting is False
    stopped = Simulation(scenario([{"op": "tdvmcall", "r11": "report_fatal_error"}]))
    stopped.run()
    assert stopped.vcpus[0].guest.awaiting is True


def test_statistical_guest_behaviours_do_not_combine_with_a_program():
    """ipi_hz (a statistical IPI stream) with a program is an error naming the key."""
    with pytest.raises(ScenarioError, match=r"vm\[0\]\.interrupts\.ipi_hz: not with a scripted"):
        scenario_from_dict({"vm": [{"interrupts": {"ipi_hz": 10.0},
                                    "workload": {"program": [{"op": "cpuid"}]}}]})
