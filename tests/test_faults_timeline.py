"""Abort paths as whole timelines: what runs, in which order, at which instant."""

from tdsim.scenario import scenario_from_dict
from tdsim.sim import Simulation
from tdsim.trace import Tracer


class Draws:
    """A stand-in random stream returning scripted draws (then never firing)."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def random(self):
        return self.draws.pop(0) if self.draws else 1.0

    def choice(self, seq):
        return seq[1]  # 0xA9: TD epoch


def pinned(faults, strategy="current", duration_us=30):
    return scenario_from_dict({
        "sim": {"duration_us": duration_us, "seed": 1},
        "host": {"cpus": 2, "tick_hz": 0},
        "kvm": {"host_state": strategy},
        "vm": [{"vcpus": 1, "pin": [1],
                "workload": {"compute_us": 10, "compute_dist": "fixed", "mix": {"cpuid": 1}}}],
        "faults": faults,
    }, name="<timeline>")


def log_of(tracer):
    return [(t, kind, f.get("status") or f.get("abort") or f.get("reason") or "")
            for t, kind, cpu, vcpu, f in tracer.sorted_events()]


def test_operand_busy_then_retry_timeline():
    """OPERAND_BUSY at the first TDH.VP.ENTER: the SEAMCALL returns at once, KVM counts the
    abort, passes the IRQ window and retries; the retry enters the TD (with the first-entry
    flush, since the refused SEAMCALL never switched the LP's TDVPR)."""
    scenario = pinned({"operand_busy": 0.5})
    c = scenario.data["costs"]
    sim = Simulation(scenario, Tracer(kinds=["seamcall", "late_abort", "kvm_entry",
                                             "kvm_exit"]))
    p, name, _ = sim.faults.module[0]
    sim.faults.module[0] = (p, name, Draws(0.0))
    sim.faults.detail_rng = Draws()
    sim.run()
    # before each entry attempt vcpu_enter_guest reads the host DEBUGCTL (RDMSR); after each
    # TDH.VP.ENTER return, refused or not, tdx_vcpu_run writes PKRU and IA32_XSS back
    t_refused = (c["context_switch_ns"] + c["kvm_run_ioctl_ns"] + c["vcpu_load_ns"]
                 + 4 * c["wrmsr_ns"] + c["vcpu_enter_guest_ns"] + c["rdmsr_ns"]
                 + c["seamcall_ns"])
    t_enter = (t_refused + c["wrpkru_ns"] + c["wrmsr_ns"] + c["exit_handling_ns"]
               + c["vcpu_enter_guest_ns"] + c["rdmsr_ns"] + c["seamcall_ns"]
               + c["td_entry_ns"] + c["first_entry_flush_ns"])
    t_exit = t_enter + 10_000 + c["guest_tdvmcall_ns"] + c["td_exit_ns"]
    assert log_of(sim.tracer)[:6] == [
        (t_refused, "seamcall", "TDX_OPERAND_BUSY"),
        (t_refused, "late_abort", "operand_busy"),
        (t_refused, "kvm_exit", "INVALID"),
        (t_enter, "kvm_entry", ""),
        (t_exit, "seamcall", "TDX_SUCCESS"),
        (t_exit, "kvm_exit", "CPUID"),
    ]
    assert sim.vcpus[0].stat["seamcall.TDH_VP_ENTER.operand_busy.0xa9"] == 1


def test_sept_zap_spin_then_entry_timeline():
    """wait_for_sept_zap set at t=0 and cleared at 3 us: the vCPU spins (no SEAMCALL) every
    enter + exit-handling; the entry planned after the flag clears enters the TD.  (The flag
    is read when the spin is planned, i.e. one spin's work before its late check.)"""
    scenario = pinned({})
    c = scenario.data["costs"]
    sim = Simulation(scenario, Tracer(kinds=["seamcall", "late_abort", "kvm_entry"]))
    vm = sim.vms[0]
    vm.wait_for_sept_zap = True

    def clear():
        yield sim.env.timeout(3000)
        vm.wait_for_sept_zap = False

    sim.env.process(clear())
    sim.run()
    # each spin: vcpu_enter_guest up to the vendor run (with the RDMSR of the host DEBUGCTL,
    # which precedes tdx_vcpu_run), then the exit handling; no SEAMCALL, so no restores
    first = (c["context_switch_ns"] + c["kvm_run_ioctl_ns"] + c["vcpu_load_ns"]
             + 4 * c["wrmsr_ns"] + c["vcpu_enter_guest_ns"] + c["rdmsr_ns"])
    spin = c["vcpu_enter_guest_ns"] + c["rdmsr_ns"] + c["exit_handling_ns"]
    spins = [first] + [first + k * spin for k in range(1, 10)
                       if first + (k - 1) * spin < 3000]
    t_enter = (spins[-1] + spin + c["seamcall_ns"] + c["td_entry_ns"]
               + c["first_entry_flush_ns"])
    assert log_of(sim.tracer)[:len(spins) + 2] == [
        (t, "late_abort", "wait_for_sept_zap") for t in spins] + [
        (t_enter, "kvm_entry", ""),
        (t_enter + 10_000 + c["guest_tdvmcall_ns"] + c["td_exit_ns"], "seamcall",
         "TDX_SUCCESS"),
    ]
