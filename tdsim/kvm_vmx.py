"""VMX vendor code of KVM (arch/x86/kvm/vmx/vmx.c), as ``struct vcpu_vmx``: plain VMX guests
sharing host CPUs with TDs.

What matters here is the host state (docs/host-state.md): ``vmx_prepare_switch_to_guest`` loads the
guest's values of the user-return MSRs through ``kvm_set_user_return_msr`` once per load
(``guest_uret_msrs_loaded``), saves the host KERNEL_GS_BASE and writes the guest's;
``vmx_prepare_switch_to_host`` (vcpu_put) counts ``host_state_reload``, reads the guest
KERNEL_GS_BASE back and restores the host's.  ``kvm_set_user_return_msr`` skips the WRMSR when
KVM's per-CPU cache says the value is already there, so a cache that lies (v6.16 after a
refused TD entry) lets a VMX guest run with a host value: the guest sees it
when it reads TSC_AUX (RDPID/RDTSCP), which the ``guest_msr_corruption`` oracle checks.

Simplifications: a VM exit is a plain hardware exit (no TDVMCALL); the workload's kinds map to
the VMX exit they would cause (cpuid -> CPUID, io -> IO_INSTRUCTION, mmio -> EPT_MISCONFIG,
mapgpa and hypercall -> VMCALL, ...); posted interrupts only wake a halted vCPU or add guest
handler time; the VMCS/segment reload work at put is folded into ``vcpu_put_ns``; a host NMI
during the guest's run exits with EXCEPTION_NMI and is handled in place.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from . import arch, oracles
from .host import HOST_IRQ, SITE_PREPARE, SITE_PUT
from .kvm_x86 import KVM_MP_STATE_HALTED, Kvm, KvmVcpu, KvmX86Ops
from .segment import PH_BLOCKED

if TYPE_CHECKING:
    from .clock import Environment
    from .config import Costs
    from .findings import Findings
    from .host import HostCpu, Scheduler, Stat
    from .irqstats import IrqStats
    from .kvm_x86 import KvmX86
    from .scope import VcpuScope
    from .trace import Tracer

# The VM exit each workload kind causes on VMX.
_KIND_TO_EXIT_REASON = {
    "cpuid": arch.EXIT_REASON_CPUID, "rdmsr": arch.EXIT_REASON_MSR_READ,
    "wrmsr": arch.EXIT_REASON_MSR_WRITE, "hypercall": arch.EXIT_REASON_VMCALL,
    "io": arch.EXIT_REASON_IO_INSTRUCTION, "mmio": arch.EXIT_REASON_EPT_MISCONFIG,
    "mapgpa": arch.EXIT_REASON_VMCALL, "hlt": arch.EXIT_REASON_HLT,
}
_EXIT_KEYS = {r: f"exits.reason.{n}" for r, n in arch.EXIT_REASON_NAMES.items()}

# The guest kernel's syscall MSRs (a Linux guest programs the same kind of values as a host).
GUEST_STAR = 0x0023001000000000
GUEST_LSTAR = 0xFFFFFFFF81A00080
GUEST_CSTAR = 0xFFFFFFFF81A01C40
GUEST_SYSCALL_MASK = 0x47700


class VcpuVmx(KvmVcpu):
    """struct vcpu_vmx (with its struct vcpu_vt) of a plain VMX guest."""

    def __init__(self, env: Environment, scope: VcpuScope, vm: Kvm, pin: int | None,
                 guest: Any, tsc_aux_read_hz: float, costs: Costs, kvm: KvmX86,
                 sched: Scheduler, irq: IrqStats, stat: Stat, findings: Findings,
                 tracer: Tracer | None, cpu: HostCpu) -> None:
        super().__init__(env, scope, vm, pin,
                         0x7F5500000000 + (vm.index << 20) + scope.index * 0x1000,
                         costs, kvm, sched, irq, stat, findings, tracer, cpu)
        self.kvm_x86_ops = VMX_X86_OPS
        self.guest = guest
        self.guest_uret_msrs_loaded = False
        self.msr_host_kernel_gs_base = 0
        self.msr_guest_kernel_gs_base = (0x7F1100000000 + (vm.index << 20)
                                         + scope.index * 0x1000)
        # The guest's TSC_AUX: its vCPU id, as a Linux guest sets it (0 is a legal value).
        self.guest_tsc_aux = scope.index
        self.guest_uret_values = (
            (arch.MSR_SYSCALL_MASK, GUEST_SYSCALL_MASK), (arch.MSR_LSTAR, GUEST_LSTAR),
            (arch.MSR_CSTAR, GUEST_CSTAR), (arch.MSR_TSC_AUX, self.guest_tsc_aux),
            (arch.MSR_STAR, GUEST_STAR),
        )
        self.tsc_aux_read_hz = tsc_aux_read_hz
        self.exit_reason = 0
        self.pi_pending = False
        self.pending_completion: int | None = None

    def host_gsbase(self) -> int:
        return self.gsbase

    # --- load / put --------------------------------------------------------------------
    def vmx_vcpu_load(self, cpu: HostCpu) -> None:
        """vmx_vcpu_load: a vCPU that moved has its VMCS cleared on the old CPU
        (loaded_vmcs_clear, a synchronous IPI), charged here."""
        if self.cpu_index != -1 and self.cpu_index != cpu.index:
            self.sched.cpus[self.cpu_index].host_irq(_HOST_IRQ_OTHER)
            cpu.acc += self.costs.ipi_ns
            self.stat["migrations"] += 1
        self.cpu_index = cpu.index

    def vmx_prepare_switch_to_guest(self, cpu: HostCpu) -> None:
        """vmx_prepare_switch_to_guest: guest user-return MSR values once per load, then
        host KERNEL_GS_BASE saved (current->thread.gsbase) and the guest's written."""
        if not self.guest_uret_msrs_loaded:
            self.guest_uret_msrs_loaded = True
            uret = cpu.uret
            for slot, value in self.guest_uret_values:
                uret.set(slot, value, SITE_PREPARE)
        if self.guest_state_loaded:
            return
        self.msr_host_kernel_gs_base = self.host_gsbase()
        cpu.wrmsr(arch.MSR_KERNEL_GS_BASE, self.msr_guest_kernel_gs_base, SITE_PREPARE)
        self.guest_state_loaded = True

    def vmx_vcpu_put(self, cpu: HostCpu) -> None:
        """vmx_vcpu_put -> vmx_prepare_switch_to_host."""
        if not self.guest_state_loaded:
            return
        self.stat["host_state_reload"] += 1
        self.msr_guest_kernel_gs_base = cpu.rdmsr(arch.MSR_KERNEL_GS_BASE)
        cpu.wrmsr(arch.MSR_KERNEL_GS_BASE, self.msr_host_kernel_gs_base, SITE_PUT)
        self.guest_state_loaded = False
        self.guest_uret_msrs_loaded = False

    def vmx_vcpu_pre_run(self) -> int:
        return 1

    # --- vmx_vcpu_run --------------------------------------------------------------------
    def vmx_vcpu_run(self, cpu: HostCpu) -> Generator[Any, Any, int]:
        """vmx_vcpu_run: VMRESUME, the guest's run, the VM exit; then the guest's TSC_AUX
        reads during the run.  Returns EXIT_FASTPATH_NONE."""
        costs = self.costs
        guest = self.guest
        cpu.acc += costs.vmx_entry_ns
        cut = yield from self.run_entry(cpu, guest.remaining_ns, costs.vmx_exit_ns,
                                        costs.td_exit_ns)
        if self.exit_work:  # the entry oracles (the VM was entered)
            oracles.check_entry(self)
        if cut is not None:
            ran = self.seg_ran
            guest.remaining_ns -= ran
            reason = (arch.EXIT_REASON_EXCEPTION_NMI if cut.nmi
                      else arch.EXIT_REASON_EXTERNAL_INTERRUPT)
        else:
            ran = guest.remaining_ns
            guest.remaining_ns = 0
            reason = _KIND_TO_EXIT_REASON[guest.kind]
        if self.tsc_aux_read_hz > 0 and ran > 0:
            self.guest_reads_tsc_aux(cpu, ran)
        self.exit_reason = reason
        self.stat[_EXIT_KEYS[reason]] += 1  # (exits: their sum)
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.t_enter, "kvm_entry", cpu.index, self.name)
            tracer.emit(self.env.now, "kvm_exit", cpu.index, self.name,
                        reason=arch.EXIT_REASON_NAMES[reason], vp_enter_ret="-")
        return 0

    def guest_reads_tsc_aux(self, cpu: HostCpu, ran_ns: int) -> None:
        """The guest read TSC_AUX (RDPID/RDTSCP) ``tsc_aux_read_hz`` times per second of its
        run, deterministically spread; each read returns what the CPU holds."""
        guest = self.guest
        guest.tsc_aux_acc += int(ran_ns * self.tsc_aux_read_hz)
        n = guest.tsc_aux_acc // 1_000_000_000
        if not n:
            return
        guest.tsc_aux_acc -= n * 1_000_000_000
        self.stat["tsc_aux_reads"] += n
        hw = cpu.msr[arch.MSR_TSC_AUX]
        if hw != self.guest_tsc_aux:
            self.stat["tsc_aux_reads.corrupt"] += n
            self.findings.record(
                "guest_msr_corruption", cpu.index, self.name,
                f"guest RDPID read TSC_AUX={hw:#x}, KVM meant {self.guest_tsc_aux:#x} "
                f"(KVM's cache says {cpu.uret.curr[arch.MSR_TSC_AUX]:#x})",
                msr=arch.MSR_TSC_AUX)

    def vmx_handle_exit_irqoff(self, cpu: HostCpu) -> None:
        """vmx_handle_exit_irqoff: the host handler's cost is charged in vmx_handle_exit."""

    def vmx_handle_exit(self, cpu: HostCpu, fastpath: int) -> int:
        """vmx_handle_exit -> the exit handler: 1 = resume, 0 = to userspace."""
        cpu.acc += self.costs.vmx_exit_handling_ns
        reason = self.exit_reason
        guest = self.guest
        if reason == arch.EXIT_REASON_EXTERNAL_INTERRUPT:
            cpu.acc += self.costs.host_irq_ns
            self.stat["irq_exits"] += 1
            return 1
        if reason == arch.EXIT_REASON_EXCEPTION_NMI:
            cpu.acc += self.costs.host_nmi_ns
            return 1
        if reason == arch.EXIT_REASON_HLT:
            self.mp_state = KVM_MP_STATE_HALTED
        elif reason in (arch.EXIT_REASON_IO_INSTRUCTION, arch.EXIT_REASON_EPT_MISCONFIG):
            self.run_exit_reason = (arch.KVM_EXIT_IO if reason == arch.EXIT_REASON_IO_INSTRUCTION
                                    else arch.KVM_EXIT_MMIO)
            self.pending_completion = self.run_exit_reason
            return 0
        guest.next_period()
        return 1

    def vmx_complete_userspace_io(self, cpu: HostCpu) -> int:
        """The IO / MMIO completion: the guest goes on into its next period."""
        if self.pending_completion is None:
            return 1
        self.pending_completion = None
        self.guest.next_period()
        return 1

    def vmx_cancel_injection(self) -> None:
        """vmx_cancel_injection: nothing was injected."""

    def vmx_inject_nmi(self, cpu: HostCpu) -> None:
        """Not modelled: no NMI source targets a VMX co-tenant."""
        raise NotImplementedError("NMIs into VMX guests are not modelled")

    # --- interrupts ----------------------------------------------------------------------
    def vmx_deliver_interrupt(self, vector: int, source: str) -> None:
        """A posted interrupt (the guest's timer): wakes a halted vCPU, else the guest runs
        its handler without a VM exit."""
        self.stat["pi_posted"] += 1
        if self.phase == PH_BLOCKED:
            self.pi_pending = True
            self.kvm_vcpu_wake_up()
        else:
            self.guest.irq_debt_ns += self.costs.guest_irq_ns

    def vmx_interrupt_allowed(self) -> bool:
        return True

    def vmx_has_pending_interrupt(self, cpu: HostCpu) -> bool:
        """A posted interrupt woke the halted vCPU (consumed by the check)."""
        pending = self.pi_pending
        self.pi_pending = False
        return pending

    def vmm_service_ns(self) -> int:
        """The VMM's service time for the exit (IO, MMIO, a hypercall; nothing else)."""
        reason = self.run_exit_reason
        costs = self.costs
        if reason == arch.KVM_EXIT_IO:
            return costs.vmm_io_ns
        if reason == arch.KVM_EXIT_MMIO:
            return costs.vmm_mmio_ns
        if reason == arch.KVM_EXIT_HYPERCALL:
            return costs.vmm_mapgpa_ns
        return 0


_HOST_IRQ_OTHER = HOST_IRQ["other"]

VMX_X86_OPS = KvmX86Ops(
    vcpu_load=VcpuVmx.vmx_vcpu_load,
    vcpu_put=VcpuVmx.vmx_vcpu_put,
    prepare_switch_to_guest=VcpuVmx.vmx_prepare_switch_to_guest,
    vcpu_pre_run=VcpuVmx.vmx_vcpu_pre_run,
    vcpu_run=VcpuVmx.vmx_vcpu_run,
    handle_exit_irqoff=VcpuVmx.vmx_handle_exit_irqoff,
    handle_exit=VcpuVmx.vmx_handle_exit,
    cancel_injection=VcpuVmx.vmx_cancel_injection,
    inject_nmi=VcpuVmx.vmx_inject_nmi,
    interrupt_allowed=VcpuVmx.vmx_interrupt_allowed,
    protected_apic_has_interrupt=VcpuVmx.vmx_has_pending_interrupt,
    deliver_interrupt=VcpuVmx.vmx_deliver_interrupt,
    complete_userspace_io=VcpuVmx.vmx_complete_userspace_io,
)
