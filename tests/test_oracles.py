"""The abort oracles have teeth (each wrong strategy or wrong exit-status handling is caught
by its intended oracle) and stay silent for the shipped `current` + `checked` code."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tdsim.findings import ORACLES
from tdsim.scenario import scenario_from_dict
from tdsim.sim import Simulation, run

WRONG = Path(__file__).with_name("wrong_strategies.py")


def scenario(host_state, faults, mix=None, exit_reason="checked", vms=None, duration_us=5000,
             seed=3):
    vms = vms or [{"vcpus": 2, "pin": [1, 2], "workload": {
        "compute_us": 10, "mix": mix or {"cpuid": 3.0, "io": 1.0}}}]
    return scenario_from_dict({
        "sim": {"duration_us": duration_us, "seed": seed},
        "host": {"cpus": 3, "tick_hz": 250, "tasks": 0},
        "kvm": {"host_state": host_state, "exit_reason": exit_reason},
        "vm": vms, "faults": faults,
    }, name="<oracles>")


def names(result):
    return {v["invariant"] for v in result.violations}


def test_skip_kgs_restore_when_aborted_is_a_host_state_leak():
    """Skipping the KERNEL_GS_BASE restore after a refused entry leaks the module's 0."""
    faults = {"operand_busy": 0.3, "signal_hz": 50000}
    r = run(scenario(f"{WRONG}:SkipKgsRestoreWhenAborted", faults))
    assert "host_state_leak" in names(r)
    assert any("KERNEL_GS_BASE=0x0" in v["detail"] for v in r.violations)
    assert run(scenario("current", faults)).violations == []


def test_cache_only_uret_is_a_cache_mismatch_on_late_aborts():
    """Setting user-return values only in the cache is caught once an entry aborts."""
    faults = {"need_resched_hz": 50000}
    r = run(scenario(f"{WRONG}:CacheOnlyUret", faults))
    assert "uret_cache_mismatch" in names(r)
    assert run(scenario(f"{WRONG}:CacheOnlyUret", {}, mix={"cpuid": 1.0})).violations == []


def test_never_restore_on_user_return_is_a_host_state_leak():
    """A notifier that restores nothing lets host user code run with the module's values."""
    r = run(scenario(f"{WRONG}:NeverRestoreOnUserReturn", {}))
    assert "host_state_leak" in names(r)


def l2_vms(mix=None):
    """The default two pinned vCPUs in a TD with L2 VMs (the error_exit statuses need it)."""
    return [{"vcpus": 2, "pin": [1, 2], "td_partitioning": True, "workload": {
        "compute_us": 10, "mix": mix or {"cpuid": 3.0, "io": 1.0}}}]


@pytest.mark.parametrize(("low", "oracles"), [
    (77, {"error_status_dispatched", "tdvmcall_completion"}),
    (49, {"error_status_dispatched", "tdvmcall_completion"}),
])
def test_raw_exit_reason_misreads_error_statuses(low, oracles):
    """exit_reason = "raw": an L2 status whose low bits are 77/49 is dispatched to an exit
    handler, and the intended oracle fires."""
    faults = {"error_exit": 0.02, "error_exit_low_bits": [low]}
    r = run(scenario("current", faults, exit_reason="raw", vms=l2_vms()))
    assert names(r) == oracles
    v = r.violations[0]
    assert v["t_ns"] > 0
    assert v["cpu"] in (1, 2)
    assert v["vcpu"].startswith("td0.vcpu")


def test_raw_exit_reason_with_low_bits_0_is_no_nmi():
    """Low bits 0 read as EXCEPTION_NMI: the NMI check also needs is_nmi(R9), and the module
    zeroes R9 on such an exit, so no host NMI handler runs (no spurious_nmi); the exit is then
    taken for an exception (KVM_EXIT_EXCEPTION, vector 0) and the VMM stops the vCPU."""
    r = run(scenario("current", {"error_exit": 0.02, "error_exit_low_bits": [0]},
                     exit_reason="raw", vms=l2_vms()))
    assert r.violations == []
    assert r.metrics["userspace_exits.reason.KVM_EXIT_EXCEPTION"] == r.metrics[
        "faults.error_exit"] > 0


def test_raw_exit_reason_with_low_bits_1_is_a_kvm_bug():
    """Low bits 1 read as EXTERNAL_INTERRUPT: handle_external_interrupt_irqoff finds
    interruption information 0 (not an external interrupt) and KVM_BUGs: the VM is dead."""
    r = run(scenario("current", {"error_exit": 0.02, "error_exit_low_bits": [1]},
                     exit_reason="raw", vms=l2_vms()))
    assert r.violations == []
    assert r.metrics["kvm_bug.handle_external_interrupt_irqoff"] == 1
    assert r.metrics["kernel_warn.handle_external_interrupt_irqoff"] == 1
    assert r.metrics["vcpu_stopped"] == 2


@pytest.mark.parametrize("low", [0, 1, 77, 49])
def test_checked_exit_reason_reports_error_statuses_as_unexpected(low):
    """exit_reason = "checked": the same statuses trip tdx_handle_exit's WARN_ON_ONCE (not
    TDX_SUCCESS past the error filter) and become KVM_EXIT_INTERNAL_ERROR; no oracle."""
    faults = {"error_exit": 0.02, "error_exit_low_bits": [low]}
    r = run(scenario("current", faults, vms=l2_vms()))
    assert r.violations == []
    n = r.metrics["faults.error_exit"]
    assert r.metrics["userspace_exits.reason.KVM_EXIT_INTERNAL_ERROR"] == n > 0
    assert r.metrics["kernel_warn.tdx_handle_exit"] == n


def test_error_exit_needs_a_td_with_l2_vms():
    """The L2 statuses of error_exit exist only with TD partitioning: refused without it."""
    from tdsim.scenario import ScenarioError

    with pytest.raises(ScenarioError, match="td_partitioning"):
        scenario("current", {"error_exit": 0.02})


def test_raw_exit_reason_refusal_with_zero_detail_runs_no_nmi_handler():
    """A refusal whose low bits are 0 (TSC_ROLLBACK) reads as EXCEPTION_NMI under raw, but
    the NMI check also needs is_nmi(R9) and the refusal leaves R9 zero: no host NMI handler;
    tdx_handle_exit's error filter then reports it (KVM_EXIT_INTERNAL_ERROR), as under
    checked."""
    for exit_reason in ("raw", "checked"):
        r = run(scenario("current", {"tsc_rollback": 0.01}, exit_reason=exit_reason))
        assert r.violations == []
        assert r.metrics["userspace_exits.reason.KVM_EXIT_INTERNAL_ERROR"] == r.metrics[
            "late_abort.tsc_rollback"] > 0


def test_entry_on_a_vcpu_associated_elsewhere_is_caught():
    """TDH.VP.ENTER for a vCPU the module associates with another LP fires the oracle and
    the module refuses with TDX_VCPU_ASSOCIATED."""
    sim = Simulation(scenario("current", {}, duration_us=100))
    sim.vcpus[0].module_assoc_cpu = sim.cpus[0]
    r = sim.run()
    assert names(r) == {"entry_on_associated_vcpu"}
    assert r.metrics["seamcall.TDH_VP_ENTER.status.TDX_VCPU_ASSOCIATED"] == 1


def test_tdvmcall_reentered_without_completion_is_caught():
    """A TD entered while its TDVMCALL is still awaiting completion fires the oracle."""
    sim = Simulation(scenario("current", {}, duration_us=100))
    sim.vcpus[0].guest.awaiting = True
    r = sim.run()
    assert names(r) == {"tdvmcall_completion"}


def test_oracle_names_are_documented():
    """Every declared oracle is described in docs/late-aborts.md or docs/interrupts.md."""
    docs = Path(__file__).parents[1] / "docs"
    doc = (docs / "late-aborts.md").read_text() + (docs / "interrupts.md").read_text()
    for name in ORACLES:
        assert f"`{name}`" in doc


KINDS = ["cpuid", "rdmsr", "wrmsr", "hypercall", "io", "mmio", "mapgpa", "hlt"]
RATES = ["request_exit_hz", "kick_hz", "request_hz", "signal_hz", "need_resched_hz",
         "notify_resume_hz", "sept_zap_hz"]
# Recoverable module outcomes (the vCPU retries) may be frequent; fatal ones stop the vCPU,
# so they stay rare enough for the rest of the run to happen.
RETRIED = ["operand_busy", "zero_step"]
FATAL = ["mmu_reload_fail", "tsc_rollback", "inconsistent_msr", "vcpu_associated", "sw_error",
         "failed_vmentry", "non_recoverable", "error_exit", "genuine_ept_misconfig"]

vm_st = st.fixed_dictionaries({
    "flavor": st.sampled_from(["tdx", "vmx"]),
    "vcpus": st.integers(1, 2),
    "weights": st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=8, max_size=8),
    "compute_us": st.sampled_from([2, 5, 20]),
    "tsc_aux_read_hz": st.sampled_from([0.0, 1e6]),
})


@given(
    cpus=st.integers(1, 3),
    vms=st.lists(vm_st, min_size=1, max_size=2),
    pinned=st.booleans(),
    tasks=st.integers(0, 2),
    rates=st.dictionaries(st.sampled_from(RATES), st.sampled_from([2000, 50000, 500000]),
                          max_size=3),
    retried=st.dictionaries(st.sampled_from(RETRIED), st.sampled_from([0.01, 0.1, 0.5]),
                            max_size=2),
    fatal=st.dictionaries(st.sampled_from(FATAL), st.sampled_from([0.0005, 0.005]),
                          max_size=2),
    seed=st.integers(0, 2**16),
)
def test_current_checked_never_violates_with_aborts(cpus, vms, pinned, tasks, rates, retried,
                                                    fatal, seed):
    """Random small hosts with TDs and VMX guests and random abort rates: `current` with
    `checked` exit-status handling records no violation -- except the one today's kernel
    has: after a wait_for_sept_zap spin the IRQs-off exit handler re-runs the previous exit's
    host interrupt handler (stale exit fields, docs/late-aborts.md)."""
    vm_list = []
    for vm in vms:
        mix = dict(zip(KINDS, vm["weights"], strict=True))
        if not any(mix.values()):
            mix["cpuid"] = 1.0
        n = vm["vcpus"]
        l2 = {"td_partitioning": True} if "error_exit" in fatal and vm["flavor"] == "tdx" else {}
        vm_list.append({**l2, "flavor": vm["flavor"], "vcpus": n,
                        "pin": [i % cpus for i in range(n)] if pinned else None,
                        "workload": {"compute_us": vm["compute_us"], "timer_hz": 5000,
                                     "tsc_aux_read_hz": vm["tsc_aux_read_hz"], "mix": mix}})
    r = run(scenario_from_dict({
        "sim": {"duration_us": 2000, "seed": seed},
        "host": {"cpus": cpus, "tick_hz": 1000, "tasks": tasks, "task_run_us": 40,
                 "task_sleep_us": 60, "timeslice_us": 50},
        "kvm": {"host_state": "current", "exit_reason": "checked"},
        "vm": vm_list, "faults": {**rates, **retried, **fatal},
    }, name="<hyp>"))
    assert [v for v in r.violations if not (
        v["invariant"] == "spurious_external_interrupt"
        and "stale exit fields after wait_for_sept_zap" in v["detail"])] == []


# --- the entry oracles (tdsim.oracles) -----------------------------------------------------
SCENARIOS = Path(__file__).parents[1] / "scenarios"
LATE_CHECK_KINDS = ("kick", "request", "signal", "need_resched", "notify_resume")


def shipped(name, **overrides):
    from tdsim.scenario import load_scenario

    return load_scenario(SCENARIOS / f"{name}.toml", {"kvm.compare": [], **overrides})


def test_without_the_late_check_the_entry_oracle_fires():
    """Removing the late kvm_vcpu_exit_request() check lets the abort scenario's kicks,
    requests, signals, need_resched and notify-resume into the guest: the entry oracle fires,
    and no late abort of those kinds is left (no other path decides one)."""
    r = run(shipped("aborts_late_check"), variants=["no_late_check"])
    assert r.metrics["violations.entry_with_exit_request"] > 100
    assert not any(r.metrics.get(f"late_abort.{k}") for k in LATE_CHECK_KINDS)
    causes = {v["cause"]["what"] for v in r.violations
              if v["invariant"] == "entry_with_exit_request"}
    assert {"need_resched", "TIF_NOTIFY_RESUME", "KVM_REQ_EVENT"} <= causes
    correct = run(shipped("aborts_late_check"))
    assert correct.violations == []
    assert all(correct.metrics[f"late_abort.{k}"] > 0 for k in LATE_CHECK_KINDS)


def pinned_cpuid(duration_us=60):
    """regress_cpuid_pinned's timeline: TD exits at 16.27 us, then every 12.775 us."""
    return scenario_from_dict({
        "sim": {"duration_us": duration_us, "seed": 1},
        "host": {"cpus": 2, "tick_hz": 0},
        "vm": [{"vcpus": 1, "pin": [1], "workload": {
            "compute_us": 10, "compute_dist": "fixed", "mix": {"cpuid": 1.0}}}]})


def raise_at(sim, t_ns, action):
    def proc():
        yield sim.env.timeout(t_ns)
        action(sim.vcpus[0])
    sim.env.process(proc())


def test_work_raised_before_the_late_check_must_abort_the_entry():
    """TIF_NOTIFY_RESUME raised during the entry work after the first TD exit (16.27 us;
    the late check at 17.115 us) aborts that entry; without the check, the entry is the
    finding, reported at its exit, naming what was ignored and when."""
    sim = Simulation(pinned_cpuid())
    raise_at(sim, 16_500, lambda v: v.raise_notify_resume())
    r = sim.run()
    assert r.violations == []
    assert r.metrics["late_abort.notify_resume"] == 1
    sim = Simulation(pinned_cpuid(), variants=["no_late_check"])
    raise_at(sim, 16_500, lambda v: v.raise_notify_resume())
    r = sim.run()
    [v] = r.violations
    assert v["invariant"] == "entry_with_exit_request"
    assert v["cause"] == {"t_ns": 16_500, "what": "TIF_NOTIFY_RESUME"}
    assert v["t_ns"] == 16_270 + 12_775
    assert "pending since 16500: the late kvm_vcpu_exit_request() check at 17115" in v["detail"]


def test_work_raised_in_the_guest_is_no_finding():
    """TIF_NOTIFY_RESUME raised while the guest runs is handled after its exit, before the
    next late check (xfer_to_guest_mode_handle_work): no abort, no finding, with or
    without the late check."""
    for variants in ([], ["no_late_check"]):
        sim = Simulation(pinned_cpuid(), variants=variants)
        raise_at(sim, 20_000, lambda v: v.raise_notify_resume())
        r = sim.run()
        assert r.violations == []
        assert r.metrics["notify_resume"] == 1
        assert "late_abort.notify_resume" not in r.metrics


def test_a_kick_without_its_ipi_is_a_kick_exit_delay():
    """A kick that switches the mode but sends no IPI leaves the guest running to its own
    next exit: kick_exit_delay (and nothing else); with the IPI the bound holds."""
    r = run(shipped("aborts_late_check"), variants=["no_kick_ipi"])
    assert names(r) == {"kick_exit_delay"}
    v = r.violations[0]
    assert v["cause"]["what"] == "a kick (EXITING_GUEST_MODE)"
    assert v["cause"]["t_ns"] < v["t_ns"]


def test_kick_in_the_guest_exits_within_the_ipi_latency():
    """A kick while the guest runs ends its run one IPI latency later, the bound exactly."""
    sim = Simulation(pinned_cpuid())
    raise_at(sim, 20_000, lambda v: v.kvm_vcpu_kick())
    r = sim.run()
    assert r.violations == []
    assert r.metrics["irq_exits.kick"] == 1


def test_lost_nmi_is_named_per_vcpu():
    """A late abort that withdraws the NMI already in PEND_NMI loses it: nmi_accounting for
    that vCPU, naming the injection (earlier than the end of the run)."""
    r = run(shipped("irq_nmi_watchdog"), variants=["abort_withdraws_nmi"])
    assert names(r) == {"nmi_accounting"}
    assert {v["vcpu"] for v in r.violations} == {f"td0.vcpu{i}" for i in range(4)}
    v = r.violations[0]
    assert "lost; the first, injected at" in v["detail"]
    assert v["cause"]["t_ns"] < r.metrics["sim.duration_ns"]
    assert run(shipped("irq_nmi_watchdog")).violations == []


def test_nmi_delivered_without_injection_is_caught_at_delivery():
    """PEND_NMI set with no NMI injected: the delivery itself is the finding."""
    sim = Simulation(pinned_cpuid())
    sim.vcpus[0].module_fields["PEND_NMI"] = 1
    r = sim.run()
    assert names(r) == {"nmi_accounting"}
    v = r.violations[0]
    assert v["t_ns"] == 16_270  # at the first TD exit (the entry it was delivered at)
    assert v["detail"].startswith("an NMI delivered at TD entry ")
