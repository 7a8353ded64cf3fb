"""[[expect.call]] and [[expect.msr]]: a scenario pins the registers and exits of its
scripted calls, and the MSRs read back at the end."""

import pytest

from tdsim.expect import check_calls, check_scenario
from tdsim.scenario import ScenarioError, scenario_from_dict

PROGRAM = [{"op": "tdvmcall", "name": "outb", "r11": "io", "r12": 1, "r13": 1, "r14": 0x80,
            "r15": 0x41},
           {"op": "wrmsr", "index": 0x1FC, "value": 6}]


def scenario(expect, vmm=None):
    return scenario_from_dict({
        "sim": {"duration_us": 300, "seed": 1}, "host": {"cpus": 2, "tick_hz": 0},
        "vmm": vmm or {"get_msrs": [0x1FC]},
        "vm": [{"vcpus": 1, "pin": [1], "workload": {"program": PROGRAM}}],
        "expect": expect}, name="<expect>")


def test_met_expectations_pass():
    """Registers, written registers and an exit compared on the keys given."""
    report = check_scenario(scenario({"call": [
        {"step": 0, "status": "SUCCESS", "regs_written": [],
         "exits": [{"exit_reason": "KVM_EXIT_IO", "io": {"port": 0x80, "data": 0x41}}]},
        {"step": 1, "regs_out": {"r10": 0, "r11": 32}}],
        "msr": [{"index": 0x1FC, "value": 6}]}), fingerprints=False)
    assert report.ok, report.failures
    assert "3 expectation(s)" in report.notes[0]


def test_each_unmet_expectation_is_one_line():
    """A wrong value, a missing record and a wrong MSR each give a line naming them."""
    report = check_scenario(scenario({"call": [
        {"step": 0, "exits": [{"io": {"port": 0x81}}]},
        {"step": 1, "nth": 2, "status": "SUCCESS"}],
        "msr": [{"index": 0x1FC, "value": 7}]}), fingerprints=False)
    assert len(report.failures) == 3
    assert "expect.call[0] (td0.vcpu0 step 0): exits" in report.failures[0]
    assert "recorded 1 time(s), wanted record #2" in report.failures[1]
    assert "expect.msr[0]: 0x1fc of td0.vcpu0: expected 7, got 6" in report.failures[2]


def test_lists_compare_item_by_item_and_need_the_same_length():
    """An exits list with one item does not match a call with two exits."""
    details = {"calls": {"td0.vcpu0": [{"step": 0, "exits": [{"a": 1}, {"a": 2}]}]}}
    expect = {"call": [{"vcpu": "td0.vcpu0", "step": 0, "nth": 1, "exits": [{"a": 1}],
                        **dict.fromkeys(("status", "kvm", "regs_out", "regs_written",
                                         "vp_enter_ret", "exit_reason", "handle_exit",
                                         "kvm_run"))}], "msr": []}
    assert len(check_calls(expect, details)) == 1


@pytest.mark.parametrize(("expect", "vmm", "match"), [
    ({"call": [{"vcpu": "td0.vcpu3", "step": 0}]}, None, r"expect\.call\[0\]\.vcpu"),
    ({"msr": [{"index": 0x1A0, "value": 1}]}, {}, r"expect\.msr\[0\]\.index.*get_msrs"),
])
def test_bad_references_are_load_errors(expect, vmm, match):
    """A vCPU that is not scripted, or an MSR the VMM does not read back, is bad input."""
    with pytest.raises(ScenarioError, match=match):
        scenario(expect, vmm)
