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


def stop_scenario(duration_us):
    return scenario_from_dict({
        "sim": {"duration_us": duration_us, "seed": 1},
        "host": {"cpus": 3, "tick_hz": 0},
        "vm": [{"vcpus": 2, "pin": [1, 2], "workload": {"program": [
            {"op": "compute", "us": 30, "vcpus": [0]},
            {"op": "tdvmcall", "r11": "report_fatal_error", "name": "fatal", "vcpus": [0]},
            {"op": "loop", "count": 0, "vcpus": [1], "steps": [
                {"op": "compute", "us": 2}, {"op": "cpuid", "name": "spin"}]}]}}],
    }, name="<stop>")


def test_fatal_error_stops_every_vcpu_of_the_vm():
    """fatal_error = stop (default): the reporting vCPU never returns from its call, the
    other is signalled out of KVM_RUN (KVM_EXIT_INTR); nothing runs afterwards."""
    short, long = run(stop_scenario(500)), run(stop_scenario(1500))
    assert short.metrics["exits"] == long.metrics["exits"]
    fatal = long.details["calls"]["td0.vcpu0"]
    assert [c["name"] for c in fatal] == ["fatal"]
    assert fatal[0]["kvm"] == "userspace"
    assert "regs_out" not in fatal[0]
    spin = long.details["calls"]["td0.vcpu1"]
    assert 0 < spin[-1]["t_ns"] < fatal[0]["t_ns"] + 20_000
    assert long.metrics["vm.td0.vcpu.1.userspace_exits.reason.KVM_EXIT_INTR"] == 1
    assert long.metrics["cpu.2.ns.idle"] > 1_400_000


def test_fatal_error_resume_lets_the_vcpu_go_on():
    """fatal_error = resume: the call returns (R10 unchanged: SUCCESS) and the program goes
    on."""
    r = run(scenario([{"op": "tdvmcall", "r11": "report_fatal_error"}, {"op": "cpuid"}],
                     {"fatal_error": "resume"}))
    calls = r.details["calls"]["td0.vcpu0"]
    assert [c["status"] for c in calls] == ["SUCCESS", "SUCCESS"]
