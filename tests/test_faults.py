"""Every late entry abort path (A-G, docs/late-aborts.md) switched on from a scenario: what it
counts and what happens after it (state loaded or not, where the vCPU goes next)."""

import pytest

from tdsim import arch
from tdsim.scenario import scenario_from_dict
from tdsim.sim import Simulation, run

HOST_MSRS = {arch.MSR_STAR: arch.HOST_STAR, arch.MSR_LSTAR: arch.HOST_LSTAR,
             arch.MSR_SYSCALL_MASK: arch.HOST_SYSCALL_MASK,
             arch.MSR_TSC_AUX: arch.host_tsc_aux(1)}


def scenario(faults, mix=None, host_state="current", vcpus=1, duration_us=2000,
             exit_reason="checked", compute_us=10, seed=3):
    return scenario_from_dict({
        "sim": {"duration_us": duration_us, "seed": seed},
        "host": {"cpus": 3, "tick_hz": 0, "tasks": 0},
        "kvm": {"host_state": host_state, "exit_reason": exit_reason},
        "vm": [{"vcpus": vcpus, "pin": [1 + i for i in range(vcpus)],
                "workload": {"compute_us": compute_us, "compute_dist": "fixed",
                             "mix": mix or {"cpuid": 1.0}}}],
        "faults": faults,
    }, name="<faults>")


def test_no_fault_knob_is_on_by_default():
    """The default [faults] table enables nothing: every rate and probability is 0."""
    faults = scenario({}).data["faults"]
    knobs = {k: v for k, v in faults.items() if not isinstance(v, list) and k != "sept_zap_us"}
    assert len(knobs) == 18
    assert set(knobs.values()) == {0.0}
    m = run(scenario({})).metrics
    assert m["late_abort"] == 0


def test_abort_a_request_exit_goes_to_userspace_and_resumes():
    """Abort A: a dirty-ring-full request ends KVM_RUN with KVM_EXIT_DIRTY_RING_FULL; the
    vCPU comes back and keeps running."""
    m = run(scenario({"request_exit_hz": 5000})).metrics
    n = m["late_abort.request_exit"]
    assert n > 0
    assert m["userspace_exits.reason.KVM_EXIT_DIRTY_RING_FULL"] == n
    assert m["vcpu_put.cause.kvm_run_return"] == n
    assert m["exits"] > 100
    assert m.get("vcpu_stopped", 0) == 0


def test_abort_b_mmu_reload_failure_stops_the_vcpu_before_any_state_is_loaded():
    """Abort B: kvm_mmu_reload fails before prepare_switch_to_guest; KVM_RUN returns an
    error, the VMM stops the vCPU, no host-state reload was needed."""
    m = run(scenario({"mmu_reload_fail": 1.0})).metrics
    assert m["late_abort.mmu_reload_fail"] == 1
    assert m["vcpu_stopped"] == 1
    assert m["exits"] == 0
    assert m["host_state_reload"] == 0
    assert m.get("wrmsr.site.prepare", 0) == 0


@pytest.mark.parametrize("kind", ["kick", "request", "signal", "need_resched",
                                  "notify_resume"])
def test_abort_c_each_exit_request_kind_is_counted(kind):
    """Abort C: each source of kvm_vcpu_exit_request shows up as late_abort.<kind>."""
    m = run(scenario({f"{kind}_hz": 1000000})).metrics
    assert m[f"late_abort.{kind}"] > 0
    assert m.get("violations.host_state_leak", 0) == 0


@pytest.mark.parametrize("kind", ["kick", "request", "notify_resume"])
def test_abort_c_without_put_keeps_guest_state_loaded(kind):
    """Kick / request / notify-resume aborts loop back into vcpu_enter_guest without a
    vcpu_put: state stays loaded and prepare_switch_to_guest's WRMSRs are not redone."""
    m = run(scenario({f"{kind}_hz": 1000000})).metrics
    assert m[f"late_abort.{kind}"] > 0
    assert m["vcpu_put"] == 0
    assert m["host_state_reload"] == 0
    assert m["wrmsr.site.prepare"] == 4


def test_abort_c_signal_exits_to_userspace_with_kvm_exit_intr():
    """A signal seen at the late check ends KVM_RUN with -EINTR / KVM_EXIT_INTR."""
    m = run(scenario({"signal_hz": 200000})).metrics
    assert m["userspace_exits.reason.KVM_EXIT_INTR"] >= m["late_abort.signal"] > 0
    assert m["host_state_reload"] == m["vcpu_put.cause.kvm_run_return"]


def test_abort_c_need_resched_puts_the_vcpu():
    """need_resched at the late check makes the vCPU schedule(): vcpu_put (preempt), and
    host_state_reload counts it although the TD did not run."""
    m = run(scenario({"need_resched_hz": 200000})).metrics
    assert m["vcpu_put.cause.preempt"] >= m["late_abort.need_resched"] > 0
    assert m["host_state_reload"] == m["vcpu_put"]


def test_abort_c_notify_resume_runs_resume_work():
    """notify-resume work aborts the entry and is run from the vcpu_run tail."""
    m = run(scenario({"notify_resume_hz": 200000})).metrics
    assert m["notify_resume"] >= m["late_abort.notify_resume"] > 0


def spin_sim(strategy="current"):
    s = scenario({}, host_state=strategy, duration_us=50)
    sim = Simulation(s)
    sim.vms[0].wait_for_sept_zap = True
    return s, sim


def test_abort_d_wait_for_sept_zap_spins_without_seamcall():
    """Abort D: while wait_for_sept_zap is set the vCPU spins through vcpu_enter_guest with
    IRQ windows, one spin per (enter + the host DEBUGCTL RDMSR + exit handling), and never
    issues TDH.VP.ENTER (so none of tdx_vcpu_run's per-exit restores either)."""
    s, sim = spin_sim()
    m = sim.run().metrics
    c = s.data["costs"]
    first = (c["context_switch_ns"] + c["kvm_run_ioctl_ns"] + c["vcpu_load_ns"]
             + 4 * c["wrmsr_ns"] + c["vcpu_enter_guest_ns"] + c["rdmsr_ns"])
    spin = c["vcpu_enter_guest_ns"] + c["rdmsr_ns"] + c["exit_handling_ns"]
    assert m["late_abort.wait_for_sept_zap"] == 1 + (50_000 - 1 - first) // spin
    assert m["exits"] == 0
    assert m.get("seamcall.TDH_VP_ENTER", 0) == 0
    assert m["cpu.1.ns.guest"] == 0
    vcpu = sim.vcpus[0]
    assert vcpu.guest_state_loaded
    assert vcpu.exit_reason == 0


def test_abort_d_runs_no_strategy_hook():
    """Abort D makes no SEAMCALL, so v6.16's guest_entered is never set by it."""
    _, sim = spin_sim("v6.16")
    sim.run()
    assert sim.vcpus[0].guest_entered is False


def test_abort_d_sept_zap_knob_raises_and_clears_the_flag():
    """sept_zap_hz raises wait_for_sept_zap for sept_zap_us: vCPUs spin, then run again."""
    m = run(scenario({"sept_zap_hz": 2000, "sept_zap_us": 30}, vcpus=2,
                     duration_us=5000)).metrics
    assert m["faults.sept_zap"] > 0
    assert m["late_abort.wait_for_sept_zap"] > 0
    assert m["exits"] > 500


def test_abort_e_operand_busy_retries_forever_without_touching_msrs():
    """Abort E: OPERAND_BUSY every time: fastpath EXIT_HANDLED, retry, the TD never runs,
    the module never loads guest state (host MSRs intact under v6.16, which writes none),
    but v6.16's hook still marks the vCPU as entered."""
    s = scenario({"operand_busy": 1.0}, host_state="v6.16", duration_us=100)
    sim = Simulation(s)
    m = sim.run().metrics
    n = m["late_abort.operand_busy"]
    assert n > 50
    assert m["seamcall.TDH_VP_ENTER.status.TDX_OPERAND_BUSY"] == n
    assert m["exits.reason.INVALID"] == n
    assert m["cpu.1.ns.guest"] == 0
    cpu = sim.cpus[1]
    vcpu = sim.vcpus[0]
    assert {k: cpu.msr[k] for k in HOST_MSRS} == HOST_MSRS
    assert cpu.msr[arch.MSR_KERNEL_GS_BASE] == vcpu.gsbase
    assert vcpu.guest_entered is True
    assert vcpu.vp_enter_ret & 0xFF in (0x92, 0xA9, 0x82, 0x80)
    by_id = {k[-4:]: v for k, v in m.items()
             if k.startswith("seamcall.TDH_VP_ENTER.operand_busy.")}
    assert set(by_id) == {"0x92", "0xa9", "0x82", "0x80"}
    assert sum(by_id.values()) == n


@pytest.mark.parametrize(("knob", "status", "run_exit"), [
    ("tsc_rollback", "TDX_TSC_ROLLBACK", "KVM_EXIT_INTERNAL_ERROR"),
    ("inconsistent_msr", "TDX_INCONSISTENT_MSR", "KVM_EXIT_INTERNAL_ERROR"),
    ("vcpu_associated", "TDX_VCPU_ASSOCIATED", "KVM_EXIT_INTERNAL_ERROR"),
])
def test_abort_e_fatal_refusals_stop_the_vcpu(knob, status, run_exit):
    """Refusals other than OPERAND_BUSY are unhandled exits: KVM_EXIT_INTERNAL_ERROR, and the
    VMM stops the vCPU."""
    m = run(scenario({knob: 1.0})).metrics
    assert m[f"late_abort.{knob}"] == 1
    assert m[f"seamcall.TDH_VP_ENTER.status.{status}"] == 1
    assert m[f"userspace_exits.reason.{run_exit}"] == 1
    assert m["vcpu_stopped"] == 1
    assert m["host_state_reload"] == 1
    assert m.get("violations.uret_cache_mismatch", 0) == 0


def test_abort_e_refusal_under_v616_leaves_the_cache_lying():
    """The v6.16 flaw (docs/host-state.md): a refused first entry, then vcpu_put, updates the
    user-return cache to the module's values that were never written."""
    m = run(scenario({"tsc_rollback": 1.0}, host_state="v6.16")).metrics
    assert m["violations.uret_cache_mismatch"] == 4


def test_abort_e_sw_error_is_a_kvm_bug_that_kills_the_vm():
    """A SEAMCALL software error is KVM_BUG_ON: unhandled exit for this vCPU, VM_DEAD (-EIO)
    for the others."""
    m = run(scenario({"sw_error": 1.0}, vcpus=2)).metrics
    assert m["kvm_bug"] >= 1
    assert m["late_abort.sw_error"] >= 1
    assert m["vcpu_stopped"] == 2
    assert m["exits"] == m["late_abort.sw_error"]


def test_abort_f_zero_step_is_an_ept_violation_without_entry():
    """Abort F: status 48 (success class), handled as an EPT violation; the guest never runs
    and its MSRs are never loaded; the vCPU is associated with the LP."""
    s = scenario({"zero_step": 1.0}, host_state="v6.16", duration_us=100)
    sim = Simulation(s)
    m = sim.run().metrics
    n = m["late_abort.zero_step"]
    assert n > 20
    assert m["exits.reason.EPT_VIOLATION"] == m["ept_violation"] == m["exits"] == n
    assert m["seamcall.TDH_VP_ENTER.status.TDX_SUCCESS"] == n
    assert m["cpu.1.ns.guest"] == 0
    cpu = sim.cpus[1]
    assert {k: cpu.msr[k] for k in HOST_MSRS} == HOST_MSRS
    assert sim.vcpus[0].module_assoc_cpu is cpu
    assert sim.vcpus[0].vp_enter_args.r8 != 0


@pytest.mark.parametrize(("knob", "run_exit", "counter"), [
    ("failed_vmentry", "KVM_EXIT_FAIL_ENTRY", "late_abort.failed_vmentry"),
    ("non_recoverable", "KVM_EXIT_SHUTDOWN", "faults.non_recoverable"),
])
def test_abort_g_and_non_recoverable_stop_the_vcpu(knob, run_exit, counter):
    """Failed VM entry -> KVM_EXIT_FAIL_ENTRY; NON_RECOVERABLE_VCPU | TRIPLE_FAULT ->
    KVM_EXIT_SHUTDOWN; either way the VMM stops the vCPU, with no violation."""
    r = run(scenario({knob: 1.0}))
    m = r.metrics
    assert m[counter] == 1
    assert m[f"userspace_exits.reason.{run_exit}"] == 1
    assert m["vcpu_stopped"] == 1
    assert r.violations == []


def test_genuine_ept_misconfig_is_a_kvm_bug():
    """Raw vp_enter_ret == 49 is a genuine EPT misconfig: KVM_BUG_ON and -EIO."""
    m = run(scenario({"genuine_ept_misconfig": 1.0})).metrics
    assert m["kvm_bug"] == 1
    assert m["vcpu_stopped"] == 1
    assert m.get("userspace_exits.reason.KVM_EXIT_MMIO", 0) == 0


def test_remapped_mmio_request_is_not_taken_for_a_genuine_misconfig():
    """A TDVMCALL #VE.RequestMMIO converts to reason 49 but raw is 77: it goes to userspace
    as KVM_EXIT_MMIO, no KVM bug."""
    m = run(scenario({}, mix={"mmio": 1.0})).metrics
    assert m["userspace_exits.reason.KVM_EXIT_MMIO"] > 10
    assert m.get("kvm_bug", 0) == 0


def test_switching_a_knob_on_does_not_reshuffle_another():
    """Each module outcome has its own stream: OPERAND_BUSY fires at the same SEAMCALLs
    whether or not zero-step exits are also enabled."""
    def outcomes(faults):
        sim = Simulation(scenario(faults))
        return [sim.faults.vp_enter_outcome(sim.vcpus[0])[2] for _ in range(500)]

    alone = outcomes({"operand_busy": 0.2})
    both = outcomes({"operand_busy": 0.2, "zero_step": 0.2})
    busy = [i for i, k in enumerate(alone) if k is not None]
    assert 50 < len(busy) < 150
    assert busy == [i for i, k in enumerate(both) if k in ("operand_busy", "operand_busy_late")]
    assert "zero_step" in both
