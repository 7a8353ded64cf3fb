"""VMX co-tenants (tdsim.kvm_vmx): vmx_prepare_switch_to_guest/host as vmx.c has them,
guests that read TSC_AUX, and the v6.16 stale-cache corruption (docs/host-state.md)."""

from tdsim import arch
from tdsim.kvm_vmx import GUEST_LSTAR
from tdsim.scenario import scenario_from_dict
from tdsim.sim import Simulation, run


def vmx_only(mix, duration_us=1000, read_hz=1e6):
    return scenario_from_dict({
        "sim": {"duration_us": duration_us, "seed": 3},
        "host": {"cpus": 2, "tick_hz": 0, "tasks": 0},
        "vm": [{"name": "vmx0", "flavor": "vmx", "vcpus": 1, "pin": [1],
                "workload": {"compute_us": 10, "compute_dist": "fixed", "mix": mix,
                             "tsc_aux_read_hz": read_hz}}],
    }, name="<vmx>")


def test_vmx_guest_values_are_in_the_hardware_while_loaded():
    """While a VMX vCPU is loaded, the CPU holds its guest user-return values and KERNEL_GS_BASE,
    and KVM's cache agrees; STAR equal to the host's is not rewritten."""
    sim = Simulation(vmx_only({"cpuid": 1.0}))
    m = sim.run().metrics
    cpu = sim.cpus[1]
    vcpu = sim.vcpus[0]
    assert cpu.msr[arch.MSR_TSC_AUX] == 0 == vcpu.guest_tsc_aux
    assert cpu.msr[arch.MSR_LSTAR] == GUEST_LSTAR == cpu.uret.curr[arch.MSR_LSTAR]
    assert cpu.msr[arch.MSR_KERNEL_GS_BASE] == vcpu.msr_guest_kernel_gs_base
    assert vcpu.guest_uret_msrs_loaded
    assert vcpu.guest_state_loaded
    # SYSCALL_MASK equals the host's too; LSTAR, CSTAR, TSC_AUX + KERNEL_GS_BASE written
    assert m["wrmsr.site.prepare"] == 4
    assert m["exits.reason.CPUID"] == m["exits"] > 50
    assert m["vcpu_put"] == 0


def test_vmx_put_counts_host_state_reload_and_restores_host_values():
    """Every userspace exit puts the vCPU: host_state_reload, KERNEL_GS_BASE back at put,
    user-return MSRs back at user return; the guest always reads its own TSC_AUX."""
    r = run(vmx_only({"io": 1.0}))
    m = r.metrics
    n = m["userspace_exits.reason.KVM_EXIT_IO"]
    assert n > 20
    assert m["host_state_reload"] == m["vcpu_put"] == n
    assert m["wrmsr.site.put"] == n
    assert m["wrmsr.site.user_return"] == 3 * n
    assert m["tsc_aux_reads"] > 0
    assert r.violations == []


def test_tsc_aux_reads_follow_the_configured_rate():
    """Reads are spread at tsc_aux_read_hz over the guest's run time."""
    m = run(vmx_only({"cpuid": 1.0}, read_hz=1e5)).metrics
    guest_s = m["cpu.1.ns.guest"] / 1e9
    assert abs(m["tsc_aux_reads"] - guest_s * 1e5) <= 1


def co_tenants(host_state):
    return scenario_from_dict({
        "sim": {"duration_us": 20000, "seed": 2},
        "host": {"cpus": 2, "tick_hz": 250, "tasks": 0},
        "kvm": {"host_state": host_state},
        "vm": [{"name": "td0", "vcpus": 1, "pin": [1],
                "workload": {"compute_us": 10, "mix": {"cpuid": 3, "io": 1}}},
               {"name": "vmx0", "flavor": "vmx", "vcpus": 1, "pin": [1],
                "workload": {"compute_us": 20, "mix": {"cpuid": 3, "io": 1, "hlt": 0.5},
                             "timer_hz": 2000, "tsc_aux_read_hz": 100000}}],
        "faults": {"zero_step": 0.2, "need_resched_hz": 20000},
    }, name="<co-tenants>")


def test_v616_stale_cache_corrupts_a_vmx_guests_tsc_aux():
    """v6.16 + zero-step exits + preemption: the cache says TSC_AUX=0 though the CPU holds
    the host value, the VMX guest's set() is skipped and it reads the host's TSC_AUX.  The
    stale cache shows in every run; the corrupt read needs the VMX guest to be loaded and to
    read TSC_AUX inside that window, which 6 of seeds 1-10 hit (20 ms each): at least 3
    required, so a model that never corrupts fails."""
    runs = [run(co_tenants("v6.16").replace({"sim.seed": seed})) for seed in range(1, 11)]
    assert all(r.metrics["violations.uret_cache_mismatch"] > 0 for r in runs)
    corrupted = [r for r in runs if r.metrics.get("violations.guest_msr_corruption", 0)]
    assert len(corrupted) >= 3
    v = next(v for v in corrupted[0].violations if v["invariant"] == "guest_msr_corruption")
    assert v["vcpu"] == "vmx0.vcpu0"
    assert "TSC_AUX=0x1" in v["detail"]


def test_current_keeps_the_vmx_guests_tsc_aux_right():
    """The same run under `current`: no violation."""
    assert run(co_tenants("current")).violations == []
