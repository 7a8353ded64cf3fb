"""The userspace VMM: device answers and write logs, MapGPA answers, service times."""

from tdsim.scenario import scenario_from_dict
from tdsim.sim import run

SHARED = 1 << 47


def scenario(program, vmm, vcpus=1):
    return scenario_from_dict({
        "sim": {"duration_us": 2000, "seed": 1},
        "host": {"cpus": 3, "tick_hz": 0},
        "vmm": vmm,
        "vm": [{"vcpus": vcpus, "pin": [1, 2][:vcpus], "workload": {"program": program}}],
    }, name="<vmm>")


def test_device_writes_are_recorded_with_time_address_size_and_data():
    """Two OUTs to a device: both in its write log (userspace, not in kernel)."""
    prog = [{"op": "tdvmcall", "r11": "io", "r12": 1, "r13": 1, "r14": 0x3F8, "r15": 0x41},
            {"op": "tdvmcall", "r11": "io", "r12": 2, "r13": 1, "r14": 0x3F9, "r15": 0x4243}]
    r = run(scenario(prog, {"device": [{"name": "com1", "base": 0x3F8, "size": 8}]}))
    calls = r.details["calls"]["td0.vcpu0"]
    dev = r.to_dict()["vmm"]["devices"]["com1"]
    assert dev["writes_total"] == 2
    assert [w[1:] for w in dev["writes"]] == [[0x3F8, 1, 0x41, 0], [0x3F9, 2, 0x4243, 0]]
    assert dev["writes"][0][0] == calls[0]["exits"][0]["t_ns"]


def test_device_service_time_is_the_vmm_time_of_the_exit():
    """One IN from a device with service_ns = 7777: exactly that much VMM time."""
    prog = [{"op": "tdvmcall", "r11": "io", "r12": 1, "r13": 0, "r14": 0x60}]
    r = run(scenario(prog, {"device": [{"base": 0x60, "size": 1, "service_ns": 7777}]}))
    assert r.metrics["cpu.1.ns.vmm"] == 7777


def test_map_gpa_answers_are_per_vcpu_and_the_last_repeats():
    """map_gpa_results = [success, eagain]: each vCPU's 1st chunk succeeds, then RETRY."""
    prog = [{"op": "tdvmcall", "r11": "map_gpa", "r12": SHARED, "r13": 8 << 20}]
    r = run(scenario(prog, {"map_gpa_results": ["success", "eagain"]}, vcpus=2))
    for name in ("td0.vcpu0", "td0.vcpu1"):
        rec = r.details["calls"][name][0]
        assert len(rec["exits"]) == 2
        assert rec["regs_out"]["r10"] == 1
        assert rec["regs_out"]["r11"] == SHARED + (2 << 20)


def test_fatal_error_reports_are_kept_by_the_vmm():
    """A ReportFatalError exit is listed in the result's vmm.system_events."""
    prog = [{"op": "tdvmcall", "r11": "report_fatal_error", "r12": 9}]
    r = run(scenario(prog, {}))
    events = r.to_dict()["vmm"]["system_events"]
    assert len(events) == 1
    assert events[0]["system_event"]["type"] == 7
