"""Choice points (tdsim.choices): a schedule's events land where it says, its outcomes and
guest calls are taken, a recording replays its run exactly, and a run without any of it gets
no runtime at all."""

from pathlib import Path

import pytest

from tdsim import recording
from tdsim.scenario import load_scenario, scenario_from_dict
from tdsim.sim import Simulation, run
from tdsim.trace import Tracer

SCENARIOS = Path(__file__).parents[1] / "scenarios"


def tiny(events=(), guest=None, vcpus=1, pin=(1,), **extra):
    """One or two vCPUs doing fixed 10 us CPUID round trips for 100 us; nothing random."""
    return scenario_from_dict({
        "sim": {"duration_us": 100, "seed": 1},
        "host": {"cpus": 3, "tick_hz": 0, **extra.pop("host", {})},
        "vm": [{"vcpus": vcpus, "pin": list(pin) if pin else None,
                "workload": {"compute_us": 10, "compute_dist": "fixed",
                             "mix": {"cpuid": 1.0}}}],
        "schedule": {"event": list(events), "guest": guest or {}}, **extra},
        name="<tiny>")


def injected(scenario):
    """The run's metrics and its ``inject`` trace events."""
    tracer = Tracer()
    r = run(scenario, tracer=tracer)
    return r, [e[4] for e in tracer.events if e[1] == "inject"]


def test_a_run_without_schedule_gets_no_runtime():
    """No schedule, recording or search: nothing is installed at any choice point."""
    sim = Simulation(tiny())
    assert sim.model.choices is None
    assert "begin_entry" not in vars(sim.vcpus[0])
    assert sim.module.vp_enter_outcome is None
    assert sim.vcpus[0].mmu_reload_fails is None


@pytest.mark.parametrize(("at", "late_abort", "irq_exits"), [
    ("before_check", 1, 0),   # the kick wins the IN_GUEST_MODE cmpxchg: the entry aborts
    ("after_check", 0, 1),    # the check has passed: the kick's IPI makes the TD exit
    ("in_guest", 0, 1),
    ("exit", 0, None),        # no abort; its IPI arrives in whatever runs next
])
def test_a_kick_does_what_its_landmark_implies(at, late_abort, irq_exits):
    """A kick at each landmark of entry 2 lands there and has the kernel's effect there."""
    r, inj = injected(tiny([{"kind": "kick", "vcpu": "td0.vcpu0", "entry": 2, "at": at}]))
    assert inj == [{"what": "kick", "entry": 2, "at": at, "landed": at}]
    assert r.metrics.get("late_abort.kick", 0) == late_abort
    if irq_exits is not None:
        assert r.metrics.get("exits.reason.EXTERNAL_INTERRUPT", 0) == irq_exits


def test_a_delay_moves_an_event_past_its_landmark():
    """delay_ns places the event that long after the landmark (here: into the guest)."""
    _, inj = injected(tiny([{"kind": "signal", "vcpu": "td0.vcpu0", "entry": 1,
                             "at": "after_check", "delay_ns": 3000}]))
    assert inj[0]["landed"] == "in_guest"


def test_a_module_outcome_is_what_that_entry_returns():
    """operand_busy at entry 1: exactly that TDH.VP.ENTER returns OPERAND_BUSY (SEPT)."""
    r, inj = injected(tiny([{"kind": "operand_busy", "vcpu": "td0.vcpu0", "entry": 1,
                             "detail": 0x92}]))
    assert inj == [{"what": "operand_busy", "entry": 1, "at": "seamcall",
                    "landed": "seamcall"}]
    assert r.metrics["seamcall.TDH_VP_ENTER.status.TDX_OPERAND_BUSY"] == 1
    assert r.metrics["seamcall.TDH_VP_ENTER.operand_busy.0x92"] == 1


def test_a_failed_mmu_reload_stops_the_vcpu():
    """mmu_reload_fail at entry 3: the fourth entry attempt fails, the VMM stops the vCPU."""
    r, _ = injected(tiny([{"kind": "mmu_reload_fail", "vcpu": "td0.vcpu0", "entry": 3}]))
    assert r.metrics["late_abort.mmu_reload_fail"] == 1
    assert r.metrics["vcpu_stopped"] == 1
    assert r.metrics["exits"] == 3


def test_guest_calls_are_taken_in_order_then_the_last_repeats():
    """The guest issues the listed calls, then keeps issuing the last one."""
    r, _ = injected(tiny(guest={"td0.vcpu0": ["io", {"call": "rdmsr", "compute_ns": 2000},
                                              "cpuid"]}))
    assert r.metrics["tdvmcall.io"] == 1
    assert r.metrics["tdvmcall.rdmsr"] == 1
    assert r.metrics["tdvmcall.cpuid"] == r.metrics["exits"] - 2


def test_timed_events_land_at_their_instant():
    """t_ns places an event at an absolute time, on a vCPU or (host NMIs) a CPU."""
    r, inj = injected(tiny([{"kind": "host_nmi", "cpu": 1, "t_ns": 35_000},  # in the guest
                            {"kind": "signal", "vcpu": "td0.vcpu0", "t_ns": 55_000}]))
    assert [i["at"] for i in inj] == ["t", "t"]
    assert r.metrics["host_nmi"] == 1
    assert r.metrics["exits.reason.EXCEPTION_NMI"] == 1
    assert r.metrics["userspace_exits.reason.KVM_EXIT_INTR"] == 1


def test_a_migration_moves_an_unpinned_vcpu():
    """migrate: a host task wakes on the vCPU's CPU and an idle CPU pulls the vCPU."""
    r, _ = injected(tiny([{"kind": "migrate", "vcpu": "td0.vcpu0", "entry": 2,
                           "at": "in_guest"}], pin=None, host={"task_run_us": 20}))
    assert r.metrics["preempted"] == 1
    assert r.metrics["migrations"] == 1
    assert r.metrics["seamcall.TDH_VP_FLUSH"] == 1


def test_a_preemption_keeps_a_pinned_vcpu_in_place():
    """preempt: the vCPU is put, the task runs, the vCPU is loaded again on its CPU."""
    r, _ = injected(tiny([{"kind": "preempt", "vcpu": "td0.vcpu0", "entry": 2,
                           "at": "in_guest"}], host={"task_run_us": 20}))
    assert r.metrics["preempted"] == 1
    assert r.metrics.get("migrations", 0) == 0
    assert r.metrics["cpu.1.ns.host_task"] >= 20_000


def test_sept_zaps_make_the_vcpus_spin_or_wait():
    """sept_zap raises wait_for_sept_zap (abort D spins); zap runs one [vm.sept] zap."""
    r, _ = injected(tiny([{"kind": "sept_zap", "vcpu": "td0.vcpu0", "entry": 1,
                           "at": "exit"}]))
    assert r.metrics["late_abort.wait_for_sept_zap"] > 0
    r, _ = injected(tiny([{"kind": "zap", "vcpu": "td0.vcpu0", "entry": 1,
                           "at": "in_guest"}]))
    assert r.metrics["sept.zaps"] == 1
    assert r.metrics["sept.kicks"] == 1


@pytest.mark.parametrize("name", ["aborts_cost_with", "aborts_fatal_exits",
                                  "irq_nmi_watchdog", "mixed_td_vmx"])
def test_a_recorded_run_replays_exactly(name):
    """Recording changes nothing; replaying the recording with the random sources off
    gives the same metrics and violations."""
    scenario = load_scenario(SCENARIOS / f"{name}.toml", overrides={
        "kvm.compare": [], "kvm.host_state": "v6.16", "sim.duration_us": 3000})
    plain = run(scenario)
    recorded, schedule = recording.record(scenario)
    assert recorded.metrics == plain.metrics
    assert recorded.violations == plain.violations
    assert schedule.guest
    replayed = run(recording.replay(scenario, schedule))
    assert replayed.metrics == plain.metrics
    assert replayed.violations == plain.violations
