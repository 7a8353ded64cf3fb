"""Ordering of the modelled events, asserted as whole timelines."""

from tdsim.scenario import scenario_from_dict
from tdsim.sim import run
from tdsim.trace import Tracer


def pinned(mix, duration_us, **host):
    return scenario_from_dict({
        "sim": {"duration_us": duration_us, "seed": 1},
        "host": {"cpus": 2, "tick_hz": 0} | host,
        "vm": [{"vcpus": 1, "pin": [1],
                "workload": {"compute_us": 10, "compute_dist": "fixed", "mix": mix}}],
    }, name="<timeline>")


def test_cpuid_round_trips_timeline():
    """Two in-kernel CPUID exits: load once, prepare's WRMSRs, then entry/exit pairs, each
    exit followed by tdx_vcpu_run's restores (WRPKRU and IA32_XSS with the default host)."""
    tracer = Tracer(kinds=["vcpu_load", "wrmsr", "kvm_entry", "kvm_exit", "tdvmcall"])
    scenario = pinned({"cpuid": 1.0}, 30)
    c = scenario.data["costs"]
    run(scenario, tracer=tracer)
    t_load = c["context_switch_ns"] + c["kvm_run_ioctl_ns"]
    # vcpu_enter_guest reads the host DEBUGCTL (one RDMSR) after the late check
    t_enter0 = (c["context_switch_ns"] + c["kvm_run_ioctl_ns"] + c["vcpu_load_ns"]
                + 4 * c["wrmsr_ns"] + c["vcpu_enter_guest_ns"] + c["rdmsr_ns"]
                + c["seamcall_ns"] + c["td_entry_ns"] + c["first_entry_flush_ns"])
    guest = 10_000 + c["guest_tdvmcall_ns"]
    t_exit0 = t_enter0 + guest + c["td_exit_ns"]
    t_enter1 = (t_exit0 + c["wrpkru_ns"] + c["wrmsr_ns"] + c["exit_handling_ns"]
                + c["tdvmcall_cpuid_ns"] + c["vcpu_enter_guest_ns"] + c["rdmsr_ns"]
                + c["seamcall_ns"] + c["td_entry_ns"])
    t_exit1 = t_enter1 + guest + c["td_exit_ns"]
    log = [(t, kind, f.get("msr") or f.get("reason") or f.get("leaf") or "")
           for t, kind, cpu, vcpu, f in tracer.sorted_events()]
    assert log == [
        (0, "vcpu_load", ""),  # applied when the straight-line work is computed
        (0, "wrmsr", "MSR_SYSCALL_MASK"),
        (0, "wrmsr", "MSR_STAR"),
        (0, "wrmsr", "MSR_LSTAR"),
        (0, "wrmsr", "MSR_TSC_AUX"),
        (t_enter0, "kvm_entry", ""),
        (t_exit0, "wrmsr", "MSR_IA32_XSS"),
        (t_exit0, "kvm_exit", "CPUID"),
        (t_exit0, "tdvmcall", "cpuid"),
        (t_enter1, "kvm_entry", ""),
        (t_exit1, "wrmsr", "MSR_IA32_XSS"),
        (t_exit1, "kvm_exit", "CPUID"),
        (t_exit1, "tdvmcall", "cpuid"),
    ]
    assert t_load < t_enter0


def test_io_exit_goes_through_put_and_user_return():
    """A userspace IO exit: exit, put (KERNEL_GS_BASE), user-return restores, VMM, load."""
    tracer = Tracer(kinds=["vcpu_load", "vcpu_put", "wrmsr", "kvm_exit", "userspace_exit"])
    run(pinned({"io": 1.0}, 24), tracer=tracer)
    kinds = [(kind, f.get("site") or f.get("cause") or f.get("reason") or "")
             for t, kind, cpu, vcpu, f in tracer.events]
    assert kinds == [
        ("vcpu_load", ""),
        ("wrmsr", "prepare"), ("wrmsr", "prepare"), ("wrmsr", "prepare"), ("wrmsr", "prepare"),
        ("wrmsr", "vcpu_run"),  # tdx_vcpu_run restores IA32_XSS after the TDH.VP.ENTER
        ("kvm_exit", "IO_INSTRUCTION"),
        ("vcpu_put", "kvm_run_return"),
        ("wrmsr", "put"),
        ("userspace_exit", "KVM_EXIT_IO"),
        ("wrmsr", "user_return"), ("wrmsr", "user_return"), ("wrmsr", "user_return"),
        ("wrmsr", "user_return"),
        ("vcpu_load", ""),
        ("wrmsr", "prepare"), ("wrmsr", "prepare"), ("wrmsr", "prepare"), ("wrmsr", "prepare"),
    ]
