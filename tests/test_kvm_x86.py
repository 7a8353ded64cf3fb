"""The KVM run loop against counts derived by hand from tdx.c and x86.c (docs/host-state.md).

Set-up of the hand counts: one TD vCPU pinned to host CPU 1 (CPU 1's host TSC_AUX is 1, so all
four user-return MSRs differ from the module's values), no ticks, no host tasks, no timers,
fixed compute time.  Every cost is taken from the resolved scenario, so the expected exit
times are sums of named costs, as below.
"""

import pytest

from tdsim.scenario import scenario_from_dict
from tdsim.sim import run

COMPUTE_US = 10


def one_vcpu(mix, host_state, duration_ns=None, cycles=None):
    return scenario_from_dict({
        "sim": {"duration_us": 1000, "seed": 3},
        "host": {"cpus": 2, "tick_hz": 0, "tasks": 0},
        "kvm": {"host_state": host_state},
        "vm": [{"vcpus": 1, "pin": [1],
                "workload": {"compute_us": COMPUTE_US, "compute_dist": "fixed", "mix": mix}}],
    }, name="<hand>")


# WRMSRs each strategy does per userspace-bound TDVMCALL cycle, by site (docs/host-state.md):
#   current: prepare writes the 4 user-return MSRs (cache == host -> each differs), put
#            restores KERNEL_GS_BASE, the user-return notifier restores the 4.
#   v6.16:   prepare writes nothing; put restores KERNEL_GS_BASE and updates the cache only;
#            the notifier then restores the 4 (cache says they differ).
#   eager:   after every exit, 4 user-return MSRs + KERNEL_GS_BASE written back; nothing at
#            put (KVM still counts host_state_reload) and the notifier is never registered.
# and, whatever the strategy, tdx_vcpu_run after every TDH.VP.ENTER return, with the default
# host ([host] debugctl 0, xss CET_USER, pkru non-zero; the TD's XFAM = the host XCR0;
# KVM_SUPPORTED_XSS 0): no DEBUGCTL write (no bit outside the preserved 0x5002), WRPKRU
# (host_pkru != 0), no XSETBV (host XCR0 == xfam & supported_xcr0), WRMSR IA32_XSS (host XSS
# 0x800 != xfam & 0) -- one WRMSR at site vcpu_run.  The host DEBUGCTL is read (RDMSR) at
# every entry by vcpu_enter_guest (current, eager) or at every load by
# tdx_prepare_switch_to_guest (v6.16): once per IO cycle either way.
PER_CYCLE = {
    "current": {"prepare": 4, "put": 1, "user_return": 4, "post_exit": 0, "vcpu_run": 1},
    "v6.16": {"prepare": 0, "put": 1, "user_return": 4, "post_exit": 0, "vcpu_run": 1},
    "eager": {"prepare": 0, "put": 0, "user_return": 0, "post_exit": 5, "vcpu_run": 1},
}


def io_cycle_ns(c, wrmsrs):
    """One IO cycle from TD exit to the next TD exit, summed by hand from the run loop."""
    return (c["wrpkru_ns"] + c["exit_handling_ns"] + c["tdvmcall_userspace_ns"]
            + c["vcpu_put_ns"] + c["vmm_io_ns"] + c["kvm_run_ioctl_ns"] + c["vcpu_load_ns"]
            + c["vcpu_enter_guest_ns"] + c["rdmsr_ns"] + c["seamcall_ns"] + c["td_entry_ns"]
            + COMPUTE_US * 1000 + c["guest_tdvmcall_ns"] + c["td_exit_ns"]
            + wrmsrs * c["wrmsr_ns"])


def first_exit_ns(c, prepare_wrmsrs):
    """From t=0 (thread dispatched on an idle CPU) to the first TD exit (one RDMSR of the
    host DEBUGCTL before the entry, at prepare or at entry)."""
    return (c["context_switch_ns"] + c["kvm_run_ioctl_ns"] + c["vcpu_load_ns"]
            + prepare_wrmsrs * c["wrmsr_ns"] + c["vcpu_enter_guest_ns"] + c["rdmsr_ns"]
            + c["seamcall_ns"] + c["td_entry_ns"] + c["first_entry_flush_ns"]
            + COMPUTE_US * 1000 + c["guest_tdvmcall_ns"] + c["td_exit_ns"])


@pytest.mark.parametrize("strategy", ["current", "v6.16", "eager"])
def test_userspace_io_hand_counts(strategy):
    """Userspace-bound IO: host_state_reload, vcpu_put and wrmsr.site.* equal the hand counts."""
    base = one_vcpu({"io": 1.0}, strategy)
    c = base.data["costs"]
    per = PER_CYCLE[strategy]
    first = first_exit_ns(c, per["prepare"])
    cycle = io_cycle_ns(c, sum(per.values()))
    exits = 10
    # End the run 5 us after the 10th exit: its put, notifier and next prepare (which happen
    # within the 10th exit's handling and the VMM's 3 us service) are inside the run.
    duration_ns = first + (exits - 1) * cycle + 5000
    scenario = base.replace({"sim.duration_us": duration_ns / 1000})
    m = run(scenario).metrics
    assert m["exits"] == exits
    assert m["tdvmcall.io"] == exits
    assert m["userspace_exits.reason.KVM_EXIT_IO"] == exits
    assert m["host_state_reload"] == exits
    assert m["vcpu_put"] == exits
    assert m["vcpu_put.cause.kvm_run_return"] == exits
    assert m["vcpu_load"] == exits + 1
    for site, n in per.items():
        expected = n * exits + (n if site == "prepare" else 0)
        assert m.get(f"wrmsr.site.{site}", 0) == expected, site
    assert m["wrmsr.total"] == sum(m.get(f"wrmsr.site.{s}", 0) for s in per)
    assert m["wrmsr.msr.MSR_IA32_XSS"] == exits
    assert m["wrpkru"] == exits
    assert m.get("xsetbv", 0) == 0
    assert m.get("wrmsr.msr.MSR_IA32_DEBUGCTLMSR", 0) == 0
    assert m["rdmsr.msr.MSR_IA32_DEBUGCTLMSR"] == exits + 1  # one per entry = one per load


@pytest.mark.parametrize(("strategy", "prepare"), [("current", 4), ("v6.16", 0), ("eager", 0)])
def test_in_kernel_cpuid_never_puts(strategy, prepare):
    """In-kernel CPUID only: no vcpu_put (so no host_state_reload) until the run ends."""
    scenario = one_vcpu({"cpuid": 1.0}, strategy)
    m = run(scenario).metrics
    c = scenario.data["costs"]
    assert m["exits"] > 50
    assert m["vcpu_put"] == 0
    assert m["host_state_reload"] == 0
    assert m["vcpu_load"] == 1
    assert m.get("wrmsr.site.prepare", 0) == prepare
    assert m.get("wrmsr.site.user_return", 0) == 0
    if strategy == "eager":
        assert m["wrmsr.site.post_exit"] == 5 * m["exits"]
    # Exits are evenly spaced: first exit, then one per CPUID cycle, which has WRPKRU and the
    # IA32_XSS write after every exit, and (except v6.16, which read it once at the load) the
    # RDMSR of the host DEBUGCTL before every entry.
    cycle = (c["wrpkru_ns"] + c["wrmsr_ns"] + c["exit_handling_ns"] + c["tdvmcall_cpuid_ns"]
             + c["vcpu_enter_guest_ns"] + (0 if strategy == "v6.16" else c["rdmsr_ns"])
             + c["seamcall_ns"] + c["td_entry_ns"] + COMPUTE_US * 1000
             + c["guest_tdvmcall_ns"] + c["td_exit_ns"]
             + (5 * c["wrmsr_ns"] if strategy == "eager" else 0))
    first = first_exit_ns(c, prepare)
    assert m["exits"] == 1 + (1_000_000 - 1 - first) // cycle


def test_cpu_time_parts_sum_to_duration():
    """Each CPU's guest/kvm/vmm/host_task/idle parts sum exactly to the simulated time."""
    scenario = scenario_from_dict({
        "sim": {"duration_us": 3000, "seed": 5},
        "host": {"cpus": 3, "tasks": 3, "tick_hz": 1000},
        "vm": [{"vcpus": 4, "workload": {"timer_hz": 2000,
                                          "mix": {"cpuid": 1, "io": 1, "hlt": 0.5}}}],
    }, name="<sum>")
    m = run(scenario).metrics
    for cpu in range(3):
        parts = [m[f"cpu.{cpu}.ns.{k}"] for k in ("guest", "kvm", "vmm", "host_task", "idle")]
        assert sum(parts) == 3_000_000
    assert m["cpu.0.ns.guest"] + m["cpu.1.ns.guest"] + m["cpu.2.ns.guest"] > 0


# Per-exit host state (tdx_vcpu_run after tdx_vcpu_enter_exit, both generations): one pinned
# vCPU doing in-kernel CPUID (no put, no user return), the host running with LBR in DEBUGCTL
# (bit 0, outside TDX_DEBUGCTL_PRESERVED 0x5002), IA32_XSS = CET_USER (0x800) while KVM
# supports no XSS (kvm_caps.supported_xss = 0, so xfam & 0 != 0x800), PKRU non-zero.  Every
# TDH.VP.ENTER return then costs:
#   update_debugctlmsr(host_debugctl)        1 WRMSR MSR_IA32_DEBUGCTLMSR  (site vcpu_run)
#   tdx_load_host_xsave_state: wrpkru        1 WRPKRU
#                              xsetbv        1 if the host XCR0 (0x602E7) != xfam & supported
#                                            (XFAM without AMX, 0x2E7), else 0
#                              wrmsrl XSS    1 WRMSR MSR_IA32_XSS          (site vcpu_run)
# The host DEBUGCTL is read by vcpu_enter_guest at every entry (today; the run ends inside the
# guest, so entries = exits + 1) or once at the load by tdx_prepare_switch_to_guest (v6.16).
@pytest.mark.parametrize(("strategy", "xfam", "xsetbv", "rdmsr_extra"), [
    ("current", 0x602E7, 0, 1), ("v6.16", 0x602E7, 0, None), ("current", 0x2E7, 1, 1)])
def test_per_exit_host_state_hand_counts(strategy, xfam, xsetbv, rdmsr_extra):
    scenario = one_vcpu({"cpuid": 1.0}, strategy).replace(
        {"host.debugctl": 0x1, "vm.0.xfam": xfam})
    m = run(scenario).metrics
    n = m["exits"]
    assert n > 50
    assert m["vcpu_load"] == 1
    assert m["vcpu_put"] == 0
    assert m["wrmsr.msr.MSR_IA32_DEBUGCTLMSR"] == n
    assert m["wrmsr.msr.MSR_IA32_XSS"] == n
    assert m["wrmsr.site.vcpu_run"] == 2 * n
    assert m["wrpkru"] == n
    assert m.get("xsetbv", 0) == xsetbv * n
    rdmsrs = m["rdmsr.msr.MSR_IA32_DEBUGCTLMSR"]
    assert rdmsrs == (n + rdmsr_extra if rdmsr_extra is not None else 1)
    assert run(scenario).violations == []


def test_quiet_host_needs_no_per_exit_restores():
    """A host with nothing for tdx_vcpu_run to restore: DEBUGCTL only preserved bits
    (FREEZE_IN_SMM), no PKRU in use, XSS equal to what the TD's XFAM leaves."""
    scenario = one_vcpu({"cpuid": 1.0}, "current").replace(
        {"host.debugctl": 0x4000, "host.pkru": 0, "host.xss": 0})
    m = run(scenario).metrics
    assert m["exits"] > 50
    assert m.get("wrmsr.site.vcpu_run", 0) == 0
    assert m.get("wrpkru", 0) == 0
    assert m.get("xsetbv", 0) == 0


@pytest.mark.parametrize(("variant", "host"), [
    ("no_host_xsave_restore", {}), ("stale_debugctl", {"host.debugctl": 0x1})])
def test_skipped_per_exit_restore_leaks_into_host_user_mode(variant, host):
    """A KVM that skips tdx_load_host_xsave_state, or restores a DEBUGCTL it never read, lets
    the VMM's user code run with the TD's values: host_state_leak at the user return."""
    from tdsim.sim import Simulation

    scenario = one_vcpu({"io": 1.0}, "current").replace(host)
    assert run(scenario).violations == []
    bad = Simulation(scenario, variants=[variant]).run()
    assert {v["invariant"] for v in bad.violations} == {"host_state_leak"}
