"""TDX vendor code of KVM (arch/x86/kvm/vmx/tdx.c), as ``struct vcpu_tdx``.

Run path, in the kernel's order: ``tdx_vcpu_load`` (``tdx_flush_vp_on_cpu`` on the old CPU when
the vCPU moved), ``tdx_prepare_switch_to_guest`` (the strategy's save work; sets
``guest_state_loaded``), ``tdx_vcpu_run`` (abort path D, the posted-interrupt self-IPI and
``kvm_wait_lapic_expire``, ``tdx_vcpu_enter_exit -> tdh_vp_enter``, the post-exit work,
``tdx_exit_handlers_fastpath``), the IRQ-off exit work, ``tdx_handle_exit`` (status checks, then
``handle_tdvmcall`` and friends in `tdsim.tdvmcall`), ``tdx_vcpu_put ->
tdx_prepare_switch_to_host``.  The raw SEAMCALL return (``vp_enter_ret``) and the exit reason
KVM derives from it (``exit_reason``) are kept apart, as in KVM; the TDX module's own state of
the vCPU (its association, its fields) is kept apart from KVM's.

Posted interrupts (``tdx_deliver_interrupt``; vmx/posted_intr.c and vmx/common.h): the PIR and
ON of the PI descriptor, the notification IPI to a running TD (processed without a TD exit), the
self-IPI that makes the CPU process the PIR at TD entry, and ``kvm_vcpu_wake_up`` otherwise.
With device posting (``[vm.interrupts] device_posting = "vtd"``) also the IOMMU's posting,
SN / NV / NDST across ``vmx_vcpu_pi_put`` and ``vmx_vcpu_pi_load``, and the wake-up vector's
``pi_wakeup_handler`` (docs/interrupts.md).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from . import arch, oracles
from .host import HOST_IRQ, SITE_VCPU_RUN
from .kvm_x86 import (
    EXIT_FASTPATH_EXIT_HANDLED,
    EXIT_FASTPATH_NONE,
    Kvm,
    KvmRegs,
    KvmRun,
    KvmVcpu,
    KvmX86Ops,
)
from .segment import PH_POLL, PH_SEG, WAKE
from .strategies import HostStateStrategy
from .tdx_module import INJECTED_EXIT_KEYS, SCRIPTED, TDX_MODULE_ARGS, TdxModuleArgs

if TYPE_CHECKING:
    import random

    from .clock import Environment
    from .config import Costs, InterruptConfig, KvmConfig, SeptConfig
    from .findings import Findings
    from .host import HostCpu, Scheduler, Stat
    from .irqstats import IrqStats
    from .kvm_x86 import KvmX86
    from .scope import VcpuScope
    from .tdx_module import TdxModule
    from .trace import Tracer

# tdx_to_vmx_exit_reason: the exit reason a TDVMCALL (EXIT_REASON_TDCALL) becomes, by R11
_TDVMCALL_TO_EXIT_REASON = {
    arch.TDVMCALL_CPUID: arch.EXIT_REASON_CPUID,
    arch.TDVMCALL_HLT: arch.EXIT_REASON_HLT,
    arch.TDVMCALL_IO: arch.EXIT_REASON_IO_INSTRUCTION,
    arch.TDVMCALL_RDMSR: arch.EXIT_REASON_MSR_READ,
    arch.TDVMCALL_WRMSR: arch.EXIT_REASON_MSR_WRITE,
    arch.TDVMCALL_VE_REQUEST_MMIO: arch.EXIT_REASON_EPT_MISCONFIG,
}

# seg_pi: the PI descriptor's ON at this entry (the self-IPI makes the CPU process the PIR at
# TD entry): not set, set when the entry was planned, or set after that (posted meanwhile)
SEG_PI_NONE, SEG_PI_PLANNED, SEG_PI_LATE = 0, 1, 2
SEG_SEPT_SPIN = -1  # seg_status: tdx_vcpu_run saw wait_for_sept_zap (no SEAMCALL)

_VALID = arch.TDX_EXIT_REASON_VALID_STATUSES
_STATUS = arch.TDX_SEAMCALL_STATUS_MASK

_EXIT_KEYS = {r: f"exits.reason.{n}" for r, n in arch.EXIT_REASON_NAMES.items()}
_EXIT_INVALID = "exits.reason.INVALID"
_EPT_MISCONFIG = arch.EXIT_REASON_EPT_MISCONFIG
_SW_ERROR = arch.TDX_SW_ERROR
_FAILED_VMENTRY = arch.VMX_EXIT_REASONS_FAILED_VMENTRY
_INVALID = arch.EXIT_REASON_INVALID
_TDCALL = arch.EXIT_REASON_TDCALL
_OPERAND_BUSY = arch.TDX_OPERAND_BUSY
_EXT_INTR_INFO = arch.INTR_INFO_VALID_MASK | arch.INTR_TYPE_EXT_INTR
_INTR_KIND = arch.INTR_INFO_VALID_MASK | arch.INTR_INFO_INTR_TYPE_MASK | arch.INTR_INFO_VECTOR_MASK
_MC_INFO = arch.INTR_INFO_VALID_MASK | arch.INTR_TYPE_HARD_EXCEPTION | arch.MC_VECTOR


class KvmTdx(Kvm):
    """struct kvm_tdx: a TD (and, kept with it, what the TDX module and the oracles hold
    per TD)."""

    def __init__(self, index: int, name: str, interrupts: InterruptConfig, sept: SeptConfig,
                 ipi_rng: random.Random, fault_rng: random.Random, xfam: int = 0x602E7,
                 host_debugctl: int = 0) -> None:
        super().__init__(index, name, "tdx", interrupts)
        self.xfam = xfam                # kvm_tdx->xfam (TD_PARAMS.xfam)
        # What the TDX module leaves at a TD exit of this TD (docs/host-state.md): the fixed
        # values of the user-return MSRs and KERNEL_GS_BASE, DEBUGCTL with only its
        # preserved bits, XCR0 and IA32_XSS with the TD's XFAM features, PKRU 0
        self.module_exit_msrs = dict(arch.TDX_MODULE_EXIT_MSRS)
        self.module_exit_msrs[arch.MSR_IA32_DEBUGCTLMSR] = (host_debugctl
                                                            & arch.TDX_DEBUGCTL_PRESERVED)
        self.module_exit_msrs[arch.MSR_IA32_XSS] = xfam & arch.XFEATURE_MASK_SUPERVISOR
        self.module_exit_xcr0 = xfam & ~arch.XFEATURE_MASK_SUPERVISOR
        self.tdx_interrupts = interrupts  # (a TD always has its [vm.interrupts])
        self.sept = sept                # [vm.sept]
        self.ipi_rng = ipi_rng          # a statistical guest's IPI destinations
        self.fault_rng = fault_rng      # TDH.MEM.PAGE.AUG outcomes of the fault path
        self.wait_for_sept_zap = False  # kvm_tdx->wait_for_sept_zap
        # the TDX module's TD epoch lock, held exclusively by TDH.MEM.TRACK in [t0, t1)
        self.epoch_lock_t0 = self.epoch_lock_t1 = -1
        # the window in which tdh_do_no_vcpus needs every vCPU out of the TD (an oracle's)
        self.zap_excl_t0 = self.zap_excl_t1 = -1


class TdxPerCpu:
    """tdx.c's per-CPU state: the TD vCPUs associated with each CPU (associated_tdvcpus),
    whose TDVPR the TDX module may still hold there."""

    def __init__(self, cpus: list[HostCpu]) -> None:
        self.cpus = cpus
        self.associated_tdvcpus: list[list[VcpuTdx]] = [[] for _ in cpus]
        self.vcpus: list[VcpuTdx] = []  # every TD vCPU (for tdsim's offline check)
        # posted_intr.c's wakeup_vcpus_on_cpu: the blocked vCPUs whose PI descriptor
        # notifies this CPU on POSTED_INTR_WAKEUP_VECTOR (device posting only)
        self.wakeup_vcpus_on_cpu: list[list[VcpuTdx]] = [[] for _ in cpus]

    def tdx_disable_virtualization_cpu(self, cpu: HostCpu) -> None:
        """tdx_disable_virtualization_cpu: on the CPU going down, with IRQs off,
        tdx_flush_vp for every vCPU on its associated_tdvcpus list.  The flush's error, if
        any, is ignored on this path, as in the kernel."""
        for vcpu in list(self.associated_tdvcpus[cpu.index]):
            vcpu.tdx_flush_vp(cpu)

    def pi_wakeup_handler(self, cpu: HostCpu) -> None:
        """pi_wakeup_handler (posted_intr.c), the host handler of POSTED_INTR_WAKEUP_VECTOR
        on `cpu`: kvm_vcpu_wake_up for every vCPU on this CPU's wake-up list whose PI
        descriptor has ON set.  Counts ``pi.wakeup_handler`` (the run) and ``pi.wakeups``
        (a blocked vCPU it woke) on the vCPUs listed.

        Simplified: the walk of the list takes no time (the interrupt itself costs
        host_irq_ns only where it makes a TD exit, as any host interrupt)."""
        for vcpu in list(self.wakeup_vcpus_on_cpu[cpu.index]):
            vcpu.stat["pi.wakeup_handler"] += 1
            if vcpu.pi_on and vcpu.kvm_vcpu_wake_up():
                vcpu.stat["pi.wakeups"] += 1

    def associated_with(self, cpu: HostCpu) -> list[str]:
        """The TD vCPUs still associated with `cpu`: on KVM's list, or by the TDX module."""
        listed = self.associated_tdvcpus[cpu.index]
        return [v.name for v in self.vcpus if v in listed or v.module_assoc_cpu is cpu]


class VcpuTdx(KvmVcpu):
    """struct vcpu_tdx (with its struct vcpu_vt), the TDX module's state of the vCPU kept
    apart, and the guest that runs on it."""

    def __init__(self, env: Environment, scope: VcpuScope, vm: KvmTdx, pin: int | None,
                 guest: Any, costs: Costs, config: KvmConfig, kvm: KvmX86, module: TdxModule,
                 percpu: TdxPerCpu, sched: Scheduler, irq: IrqStats, stat: Stat,
                 findings: Findings, tracer: Tracer | None, ops: KvmX86Ops,
                 cpu: HostCpu) -> None:
        super().__init__(env, scope, vm, pin,
                         0x7F5500000000 + (vm.index << 20) + scope.index * 0x1000,
                         costs, kvm, sched, irq, stat, findings, tracer, cpu)
        self.kvm_x86_ops = ops  # vt_x86_ops (tdsim.vt)
        self.tdx_vm = vm
        self.guest = guest
        self.config = config
        self.module = module
        self.percpu = percpu
        percpu.vcpus.append(self)
        self.strategy: HostStateStrategy = kvm.strategy
        # the strategy's per-exit hook, skipped outright when it keeps the base no-op
        hook = kvm.strategy.vcpu_enter_exit
        self.strategy_vcpu_enter_exit: Callable[[Any, HostCpu, int], None] | None = (
            hook if type(kvm.strategy).vcpu_enter_exit is not _BASE_ENTER_EXIT else None)
        self.msr_host_kernel_gs_base = 0  # vt->msr_host_kernel_gs_base
        # (host_debugctl: today's vcpu->arch.host_debugctl, read at every entry by
        # vcpu_enter_guest; in Linux 6.16 vt->host_debugctlmsr, read once per load by
        # tdx_prepare_switch_to_guest -- the V616 strategy)
        # tdx_load_host_xsave_state's comparisons: constants of the run (kvm_host, the TD's
        # XFAM and kvm_caps do not change), so evaluated once
        self.xsetbv_after_exit = kvm.host_xcr0 != (vm.xfam & kvm.supported_xcr0)
        self.wrmsr_xss_after_exit = kvm.host_xss != (vm.xfam & kvm.supported_xss)
        self.kvm_host_xcr0 = kvm.host_xcr0
        self.kvm_host_xss = kvm.host_xss
        self.guest_entered = False        # v6.16's flag (free for strategies)
        self.vp_enter_args: TdxModuleArgs = TdxModuleArgs()
        self.vp_enter_ret = 0             # raw return of the last TDH.VP.ENTER
        self.exit_reason = 0              # vt->exit_reason, derived by KVM
        self.exit_intr_info = 0           # vt->exit_intr_info (R9 of the last exit)
        # posted-interrupt descriptor: 256-bit request bitmap and ON
        self.pir = 0
        self.pi_on = False
        # with [vm.interrupts] device_posting = "vtd" (vmx_can_use_vtd_pi: the IOMMU posts
        # the device's MSIs), also SN, NV and NDST (a CPU index) of the descriptor and the
        # CPU whose wake-up list holds the vCPU (-1: none); without it nothing reads them.
        # tdx_vcpu_create sets NV = POSTED_INTR_VECTOR and SN (until the first load)
        self.vtd_pi = vm.tdx_interrupts.device_posting == "vtd"
        self.pi_sn = True
        self.pi_nv = arch.POSTED_INTR_VECTOR
        self.pi_ndst = -1
        self.pi_wakeup_cpu = -1
        # the current entry as planned (see tdsim.segment): ON at entry, what TDH.VP.ENTER
        # returns, an injected exit status and the kind of module outcome
        self.seg_pi = SEG_PI_NONE
        self.seg_pi_planned = False  # the planned run includes the PI handler
        self.seg_status = arch.TDX_SUCCESS
        self.seg_exit: int | None = None
        self.seg_fault: str | None = None
        self.last_irq_source = "other"    # the host interrupt behind the last cut entry
        self.t_seamcall = 0
        # the TDX module's state of this vCPU (TDVPR): the LP it is associated with, fields
        self.module_assoc_cpu: HostCpu | None = None
        self.module_fields: dict[str, int] = {}
        # the interrupt model (tdsim.interrupts): vector -> (t_posted, source) of what the
        # PIR holds; shootdowns waiting for this vCPU's ack; time of the oldest undelivered
        # NMI; the one-shot guest timer
        self.pi_src: dict[int, tuple[int, str]] = {}
        self.sd_waiters: list[Any] = []
        # vcpu->run and vcpu->arch.regs; with [kvm] regs_layout = "in_place" regs[] is
        # vp_enter_args itself (nothing copied), with "copy" the 13 registers are copied to
        # regs[] after every exit and back before every entry (tdsim.tdvmcall)
        self.run = KvmRun()
        self.regs_copy = config.regs_layout == "copy"
        # (Any: a scripted vCPU's TrackedRegs records KVM's writes in __setattr__, which code
        # compiled by mypyc calls only for an attribute it does not know the class of)
        self.gprs: Any
        if self.regs_copy:
            self.gprs = KvmRegs()
            self.regs_entry_copy_ns = len(TDX_MODULE_ARGS) * costs.regs_copy_ns
        else:
            self.gprs = self.vp_enter_args = KvmRegs()
            self.regs_entry_copy_ns = 0
        self.regs_moves = 0              # moves made by the handler running now
        self.pending_completion: Callable[[Any, HostCpu], int] | None = None
        # TDH.VP.ENTER's work up to VM entry: the SEAMCALL, the module's entry work, and
        # with the "copy" layout the copy regs[] -> vp_enter_args before it
        self.entry_ns = costs.seamcall_ns + costs.td_entry_ns + self.regs_entry_copy_ns
        # TDVMCALL state (tdsim.tdvmcall): MapGPA progress, a call outstanding in userspace,
        # KVM's emulated MSR values, the scripted guest's call log
        self.map_gpa_next = 0            # vcpu_tdx->map_gpa_next
        self.map_gpa_end = 0             # vcpu_tdx->map_gpa_end
        self.tdvmcall_outstanding = False
        self.msr_values: dict[int, int] = {}
        self.call_log: Any = None
        self.tdvmcall_handlers: dict[int, tuple[Callable[..., int], int | None]] = {}
        # the VMM's service of an exit to userspace, wired by the build step
        self.vmm_service: Callable[[Any], int] | None = None

    def host_gsbase(self) -> int:
        """current->thread.gsbase of the vCPU thread (host KERNEL_GS_BASE to restore)."""
        return self.gsbase

    # --- load / put --------------------------------------------------------------------
    def tdx_vcpu_load(self, cpu: HostCpu) -> None:
        """tdx_vcpu_load: vmx_vcpu_pi_load; if the vCPU last ran on another CPU,
        tdx_flush_vp_on_cpu there; then join this CPU's associated_tdvcpus."""
        if self.vtd_pi:
            self.vmx_vcpu_pi_load(cpu)
        old = self.cpu_index
        if old != -1 and old != cpu.index:
            self.tdx_flush_vp_on_cpu(cpu, self.percpu.cpus[old])
            self.stat["migrations"] += 1
        if self.cpu_index != cpu.index:
            self.percpu.associated_tdvcpus[cpu.index].append(self)
            self.cpu_index = cpu.index

    def tdx_flush_vp_on_cpu(self, cpu: HostCpu, old_cpu: HostCpu) -> None:
        """tdx_flush_vp_on_cpu: a synchronous IPI to the old CPU runs tdx_flush_vp there
        (TDH.VP.FLUSH, then off that CPU's list).  To an offline CPU the call does not go
        (smp_call_function_single fails): nothing is flushed, and the vCPU stays listed
        there.

        Simplification: the flush's time is charged to this (waiting) CPU; the old CPU only
        sees the call-function IPI as a host interrupt."""
        if not old_cpu.online:
            return
        old_cpu.host_irq(HOST_IRQ["flush_ipi"])
        self.tdx_flush_vp(old_cpu)
        cpu.acc += self.costs.ipi_ns + self.costs.tdh_vp_flush_ns

    def tdx_flush_vp(self, cpu: HostCpu) -> None:
        """tdx_flush_vp, on `cpu`: nothing if the vCPU is no longer associated with it
        (vcpu->cpu moved on); else TDH.VP.FLUSH (its error is the caller's business) and
        tdx_disassociate_vp: off the CPU's list, vcpu->cpu = -1.

        Simplified: the vCPU is always initialized (the flush is never skipped for that)."""
        if self.cpu_index != cpu.index:
            return
        self.module.tdh_vp_flush(self, cpu)
        listed = self.percpu.associated_tdvcpus[cpu.index]
        if self in listed:
            listed.remove(self)
        self.cpu_index = -1

    def tdx_prepare_switch_to_guest(self, cpu: HostCpu) -> None:
        """tdx_prepare_switch_to_guest: once per load (while not guest_state_loaded), the
        strategy's save work; then guest_state_loaded."""
        if self.guest_state_loaded:
            return
        self.strategy.prepare_switch_to_guest(self, cpu)
        self.guest_state_loaded = True

    def tdx_vcpu_put(self, cpu: HostCpu) -> None:
        """tdx_vcpu_put: vmx_vcpu_pi_put, then tdx_prepare_switch_to_host."""
        if self.vtd_pi:
            self.vmx_vcpu_pi_put(cpu)
        self.tdx_prepare_switch_to_host(cpu)

    # --- the PI descriptor across load / put (vmx/posted_intr.c) ------------------------
    def vmx_vcpu_pi_load(self, cpu: HostCpu) -> None:
        """vmx_vcpu_pi_load (posted_intr.c), first in tdx_vcpu_load: if NV is the wake-up
        vector, off the wake-up list of the CPU it was put on; NDST = this CPU, SN clear,
        NV = POSTED_INTR_VECTOR; then, SN being clear, ON if the PIR is not empty (what was
        posted with notifications suppressed: tdx_vcpu_run's self-IPI delivers it at entry).

        Simplified: called only with device posting (without it nothing reads SN, NV or
        NDST, and KVM's own posting sets ON with every PIR bit); the kernel's fast path
        (same CPU, not on a wake-up list: clear SN only) ends in the same state; the list
        the vCPU is on is remembered by the vCPU (the kernel finds it from vcpu->cpu)."""
        if self.pi_nv == arch.POSTED_INTR_WAKEUP_VECTOR:
            self.percpu.wakeup_vcpus_on_cpu[self.pi_wakeup_cpu].remove(self)
            self.pi_wakeup_cpu = -1
        self.pi_ndst = cpu.index
        self.pi_sn = False
        self.pi_nv = arch.POSTED_INTR_VECTOR
        if self.pir:
            self.pi_on = True

    def vmx_vcpu_pi_put(self, cpu: HostCpu) -> None:
        """vmx_vcpu_pi_put (posted_intr.c), first in tdx_vcpu_put, when vmx_needs_pi_wakeup
        (for a TD: vmx_can_use_vtd_pi, the VM has device-posted interrupts; the caller
        tests it): a vCPU blocking (in kvm_vcpu_block), not preempted, that may take
        interrupts (tdx_interrupt_allowed: not a HLT with R12 != 0) gets
        pi_enable_wakeup_handler; any other put sets SN (pi_set_sn), so device interrupts
        only set PIR bits until the next vmx_vcpu_pi_load."""
        if not self.preempted and self.halting and self.tdx_interrupt_allowed():
            self.pi_enable_wakeup_handler(cpu)
        else:
            self.pi_sn = True  # pi_set_sn

    def pi_enable_wakeup_handler(self, cpu: HostCpu) -> None:
        """pi_enable_wakeup_handler (posted_intr.c): onto this CPU's wake-up list, NV =
        POSTED_INTR_WAKEUP_VECTOR; if ON is already set (posted before NV changed, its
        notification came on POSTED_INTR_VECTOR), a self-IPI on the wake-up vector, whose
        handler runs once IRQs are enabled after the switch.

        Simplified: that handler runs at once (it finds the vCPU halting, which
        kvm_vcpu_wake_up turns into not sleeping)."""
        self.percpu.wakeup_vcpus_on_cpu[cpu.index].append(self)
        self.pi_wakeup_cpu = cpu.index
        self.pi_nv = arch.POSTED_INTR_WAKEUP_VECTOR
        if self.pi_on:
            self.percpu.pi_wakeup_handler(cpu)

    def tdx_prepare_switch_to_host(self, cpu: HostCpu) -> None:
        """tdx_prepare_switch_to_host: if guest state is loaded, count a host_state_reload and
        do the strategy's restore work (KERNEL_GS_BASE; v6.16's cache update)."""
        if not self.guest_state_loaded:
            return
        self.stat["host_state_reload"] += 1
        self.strategy.prepare_switch_to_host(self, cpu)
        self.guest_state_loaded = False

    def tdx_vcpu_pre_run(self) -> int:
        """tdx_vcpu_pre_run: -EINVAL unless the TD is runnable and the vCPU initialized
        (always so in the model)."""
        return 1

    # --- tdx_vcpu_run ------------------------------------------------------------------
    def tdx_vcpu_run(self, cpu: HostCpu) -> Generator[Any, Any, int]:
        """tdx_vcpu_run: returns EXIT_FASTPATH_EXIT_HANDLED (re-enter through the IRQ window)
        or EXIT_FASTPATH_NONE (tdx_handle_exit decides)."""
        if self.tdx_vm.wait_for_sept_zap:
            # abort path D: another thread retries a SEPT-zap SEAMCALL; no SEAMCALL here
            # (simulation: the pending work is spent in an entry segment with no entry)
            self.seg_status = SEG_SEPT_SPIN
            self.seg_pi = SEG_PI_NONE
            yield from self.run_entry(cpu, 0, 0, self.costs.td_exit_ns)
            self.count_abort(cpu, "wait_for_sept_zap")
            self.stat["sept.wait_ns"] += (self.env.now - self.t_seg0
                                          + self.costs.exit_handling_ns)
            return EXIT_FASTPATH_EXIT_HANDLED
        if self.pi_on:
            # apic->send_IPI_self(POSTED_INTR_VECTOR): pending with IRQs off, it makes the
            # CPU process the PIR at TD entry
            self.seg_pi = SEG_PI_PLANNED
            if arch.LOCAL_TIMER_VECTOR in self.pi_src:
                self.kvm_wait_lapic_expire(cpu)
        else:
            self.seg_pi = SEG_PI_NONE
        yield from self.tdx_vcpu_enter_exit(cpu)
        # after every TDH.VP.ENTER return, whatever it returned: update_debugctlmsr if the
        # host uses DEBUGCTL bits the module does not preserve, then the XSAVE state
        host_debugctl = self.host_debugctl
        if host_debugctl & ~arch.TDX_DEBUGCTL_PRESERVED:
            cpu.wrmsr(arch.MSR_IA32_DEBUGCTLMSR, host_debugctl, SITE_VCPU_RUN)
        self.tdx_load_host_xsave_state(cpu)
        ret = self.vp_enter_ret
        hook = self.strategy_vcpu_enter_exit
        if hook is not None:
            hook(self, cpu, ret)
        exit_reason = self.exit_reason
        self.stat[_EXIT_KEYS.get(exit_reason & 0xFFFF, _EXIT_INVALID)] += 1  # (exits: the sum)
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env._now, "kvm_exit", cpu.index, self.name,
                        reason=arch.EXIT_REASON_NAMES.get(exit_reason & 0xFFFF, "?"),
                        vp_enter_ret=f"{ret:#x}")
        if ret >> 32 or ret == _EPT_MISCONFIG:  # (a success's status bits are 0)
            if ret == _EPT_MISCONFIG or (ret & _SW_ERROR) == _SW_ERROR:
                return EXIT_FASTPATH_NONE
            if exit_reason & _FAILED_VMENTRY and exit_reason != _INVALID:
                return EXIT_FASTPATH_NONE
        return self.tdx_exit_handlers_fastpath()

    def kvm_wait_lapic_expire(self, cpu: HostCpu) -> None:
        """kvm_wait_lapic_expire (lapic.c): the guest timer's hrtimer fired
        lapic_timer_advance_ns early; with IRQs off, spin until its deadline."""
        if not self.config.lapic_timer_advance_ns:
            return
        wait = self.timer_deadline - (self.env.now + cpu.acc)
        if wait > 0:
            self.stat["lapic.expire_waits"] += 1
            self.stat["lapic.expire_wait_ns"] += wait
            cpu.acc += wait

    def tdx_load_host_xsave_state(self, cpu: HostCpu) -> None:
        """tdx_load_host_xsave_state: WRPKRU of the host PKRU if it is non-zero; XSETBV of
        the host XCR0 unless it equals xfam & kvm_caps.supported_xcr0; WRMSR of the host
        IA32_XSS unless it equals xfam & kvm_caps.supported_xss.  (The two comparisons are
        constants of the run, evaluated at vCPU creation.)"""
        if self.host_pkru:
            cpu.wrpkru(self.host_pkru)
        if self.xsetbv_after_exit:
            cpu.xsetbv(self.kvm_host_xcr0)
        if self.wrmsr_xss_after_exit:
            cpu.wrmsr(arch.MSR_IA32_XSS, self.kvm_host_xss, SITE_VCPU_RUN)

    def tdx_vcpu_enter_exit(self, cpu: HostCpu) -> Generator[Any, Any, None]:
        """tdx_vcpu_enter_exit: TDH.VP.ENTER; the exit fields KVM derives from its return
        (the exit reason, the interruption information from R9); the NMI check."""
        self.vp_enter_ret = ret = yield from self.module.tdh_vp_enter(self, cpu,
                                                                      self.vp_enter_args)
        fault = self.seg_fault
        if fault is not None:  # an injected module outcome: count the abort or the fault
            if fault in INJECTED_EXIT_KEYS:
                self.stat[INJECTED_EXIT_KEYS[fault]] += 1
            else:
                self.count_abort(cpu, fault)
        if self.regs_copy:
            self.regs_after_exit(cpu)
        self.exit_reason = exit_reason = self.tdx_to_vmx_exit_reason(ret)
        self.exit_intr_info = self.vp_enter_args.r9 & 0xFFFFFFFF
        if not exit_reason & 0xFFFF:  # vt_handle_nmi's first test: basic EXCEPTION_NMI
            self.vt_handle_nmi(cpu)

    def vt_handle_nmi(self, cpu: HostCpu) -> None:
        """vt_handle_nmi (vmx_handle_nmi in Linux 6.16), inside tdx_vcpu_enter_exit: for basic
        reason EXCEPTION_NMI whose interruption information is an NMI (is_nmi), the host NMI
        handler runs.  Oracle ``spurious_nmi``: it ran for a SEAMCALL return no host NMI
        caused (a scripted module outcome is taken as the real thing)."""
        if (self.exit_reason & 0xFFFF) != arch.EXIT_REASON_EXCEPTION_NMI or not arch.is_nmi(
                self.exit_intr_info):
            return
        cpu.acc += self.costs.host_nmi_ns
        cut = self.seg_cut
        if (cut is not None and cut.nmi and not self.vp_enter_ret >> 32) or (
                self.seg_fault == SCRIPTED):
            return
        self.findings.record(
            "spurious_nmi", cpu.index, self.name,
            f"host NMI handler run for vp_enter_ret={self.vp_enter_ret:#x}, "
            f"intr_info={self.exit_intr_info:#x} (no host NMI)", cause=self.exit_cause())

    def regs_after_exit(self, cpu: HostCpu) -> None:
        """The "copy" register layout: vp_enter_args -> regs[] after TDH.VP.ENTER returned
        (and count the copy regs[] -> vp_enter_args that preceded it; its time is in the
        entry, ``regs_entry_copy_ns``)."""
        args = self.vp_enter_args
        regs = self.gprs
        for r in TDX_MODULE_ARGS:
            setattr(regs, r, getattr(args, r))
        n = len(TDX_MODULE_ARGS)
        self.stat["regs.copies"] += 2 * n
        cpu.acc += n * self.costs.regs_copy_ns

    def tdx_to_vmx_exit_reason(self, ret: int) -> int:
        """tdx_to_vmx_exit_reason: bits 15:0 only for the five valid statuses (else -1u);
        then a TDCALL becomes the reason of its sub-function by R10/R11, and a genuine
        EPT_MISCONFIG becomes -1u (tdx_handle_exit reports it from the raw value).

        With ``[kvm] exit_reason = "raw"`` the low 32 bits are taken whatever the status, as
        the early ``union tdx_exit_reason`` code did."""
        if ret >> 32 and (ret & _STATUS) not in _VALID and not self.config.exit_reason_raw:
            return _INVALID
        reason = ret & 0xFFFFFFFF
        if reason == _TDCALL:
            args = self.vp_enter_args
            if args.r10:
                return arch.EXIT_REASON_VMCALL
            return _TDVMCALL_TO_EXIT_REASON.get(args.r11, arch.EXIT_REASON_TDCALL)
        if reason == arch.EXIT_REASON_EPT_MISCONFIG and not self.config.exit_reason_raw:
            return arch.EXIT_REASON_INVALID  # genuine: tdx_handle_exit KVM_BUG_ONs it
        return reason

    def tdx_exit_handlers_fastpath(self) -> int:
        """tdx_exit_handlers_fastpath: EXIT_FASTPATH_EXIT_HANDLED only for OPERAND_BUSY (e.g.
        TDH.MEM.TRACK holds the TD epoch): the run loop retries TDH.VP.ENTER through the IRQ
        window, where a KVM_REQ_OUTSIDE_GUEST_MODE requester's IPI can be acked."""
        if (self.vp_enter_ret & _STATUS) == _OPERAND_BUSY:
            self.stat["vp_enter_busy"] += 1
            return EXIT_FASTPATH_EXIT_HANDLED
        return EXIT_FASTPATH_NONE

    def vt_cancel_injection(self) -> None:
        """cancel_injection after a late abort (a no-op for a TD in KVM).  (Simulation) the
        entry work computed after the check is rolled back: ON was not consumed."""
        self.seg_pi = SEG_PI_NONE

    # --- what the TD does between VM entry and exit (applied at the exit) ---------------

    def at_td_entry(self, cut: Any) -> None:
        """What happens at TD entry (``t_enter``), applied when the TD exits: the CPU
        processes a pending PIR (the self-IPI), the module injects a pending NMI, and the
        entry oracles check what KVM let into the TD (tdsim.oracles for what the late check
        should have stopped)."""
        guest = self.guest
        if guest.awaiting:
            self.findings.record("tdvmcall_completion", self.cpu.index, self.name,
                                 f"TD entered with its TDVMCALL ({guest.kind}) not completed")
        if self.seg_pi:
            if self.seg_pi == SEG_PI_LATE:  # its handler's time is not in the planned run
                guest.irq_debt_ns += self.costs.guest_irq_ns
            self.seg_pi = SEG_PI_NONE
            self.process_pir(self.t_enter)
        if self.module_fields.get("PEND_NMI", 0):
            self.deliver_nmi(self.t_enter)  # (which clears the field)
        if self.pi_src and not (cut is not None and self.seg_ran == 0):
            # (an entry cut by a pending host interrupt runs no guest instruction; the
            # hrtimer's own vector is posted by that interrupt's handler, after it)
            self.irq.check_entry(self)
        if self.exit_work:
            oracles.check_entry(self)
        vm = self.tdx_vm
        if vm.zap_excl_t0 <= self.t_enter < vm.zap_excl_t1:
            self.findings.record("td_entry_during_zap", self.cpu.index, self.name,
                                 f"TD entry at {self.t_enter} while a SEPT zap needs every "
                                 f"vCPU out (since {vm.zap_excl_t0})",
                                 cause=(self.t_enter, "TDH.VP.ENTER entered the TD although "
                                        f"wait_for_sept_zap was set (since {vm.zap_excl_t0})"))

    def at_td_exit(self, cut: Any) -> int:
        """The guest's side of the TD exit: how far it got and the exit it made (a TDVMCALL
        with its registers, a private-page EPT violation, or a host interrupt / NMI that
        cut its run).  Returns the basic exit reason."""
        guest = self.guest
        if cut is not None:
            # a PI seen at planning ran its handler first (it is in the planned run, even if
            # a later posting drained the PIR meanwhile), so the compute period advanced
            # only by what followed it; never below 0
            ran = self.seg_ran - (self.costs.guest_irq_ns if self.seg_pi_planned else 0)
            guest.remaining_ns -= max(0, ran)
            assert guest.remaining_ns >= 0, (self.name, guest.remaining_ns)
            # the module reports the interruption information in R9 (the interrupt is
            # acknowledged on exit: valid, its type, its vector)
            if cut.nmi:
                self.vp_enter_args.r9 = arch.INTR_INFO_NMI
                return arch.EXIT_REASON_EXCEPTION_NMI
            self.vp_enter_args.r9 = _EXT_INTR_INFO | cut.vector
            self.last_irq_source = cut.name
            return arch.EXIT_REASON_EXTERNAL_INTERRUPT
        guest.remaining_ns = 0
        if guest.kind == "ept_violation":
            guest.ept_violation_regs(self.vp_enter_args)
            return arch.EXIT_REASON_EPT_VIOLATION
        guest.tdvmcall_regs(self.vp_enter_args)
        return arch.EXIT_REASON_TDCALL

    def plan_guest_run(self) -> int:
        """How long the guest will run at this entry before its next exit, if nothing cuts
        it short (its pending interrupt handler first)."""
        guest = self.guest
        if self.oneshot_period and (guest.rearm_due or (
                self.seg_pi and arch.LOCAL_TIMER_VECTOR in self.pi_src)):
            # a one-shot guest: the timer handler this entry runs (or one that ran without
            # re-arming) re-arms before anything else
            if not guest.rearm_due:
                guest.rearm_planned = True
            guest.preempt_with_rearm()
        g: int = guest.remaining_ns
        self.seg_pi_planned = planned = self.seg_pi != SEG_PI_NONE
        if planned:
            g += self.costs.guest_irq_ns
        return g

    def seg_guest_runs(self) -> bool:
        return self.seg_status == arch.TDX_SUCCESS

    # --- exit handling -----------------------------------------------------------------
    def vt_handle_exit_irqoff(self, cpu: HostCpu) -> None:
        """vt_handle_exit_irqoff (vmx_handle_exit_irqoff in Linux 6.16), run by
        vcpu_enter_guest after every vendor run, on KVM's cached exit fields -- which after
        abort path D (tdx_vcpu_run returned before any SEAMCALL) are still the previous
        exit's.  EXTERNAL_INTERRUPT -> handle_external_interrupt_irqoff; EXCEPTION_NMI with a
        machine check -> kvm_machine_check (its cost taken as an NMI handler's).  NMIs were
        handled in tdx_vcpu_enter_exit.  Not modelled: the MCE_DURING_VMENTRY case."""
        basic = self.exit_reason & 0xFFFF
        if basic == arch.EXIT_REASON_EXTERNAL_INTERRUPT:
            self.handle_external_interrupt_irqoff(cpu, self.exit_intr_info)
        elif basic == arch.EXIT_REASON_EXCEPTION_NMI and (
                self.exit_intr_info & _INTR_KIND) == _MC_INFO:
            cpu.acc += self.costs.host_nmi_ns

    def handle_external_interrupt_irqoff(self, cpu: HostCpu, intr_info: int) -> None:
        """handle_external_interrupt_irqoff: interruption information that is not an
        external interrupt is a KVM_BUG ("unexpected VM-Exit interrupt info"); otherwise the
        host's handler for its vector runs.  Oracle ``spurious_external_interrupt``: the
        handler ran for anything but this SEAMCALL's successful TD exit that a host
        interrupt caused -- a stale exit after abort path D, or an error status read as an
        exit reason (a scripted module outcome is taken as the real thing)."""
        if not arch.is_external_intr(intr_info):
            self.vm.kvm_bug_on(self, "handle_external_interrupt_irqoff")
            return
        cpu.acc += self.costs.host_irq_ns
        cut = self.seg_cut
        if self.seg_status == SEG_SEPT_SPIN:
            why = "stale exit fields after wait_for_sept_zap (no SEAMCALL)"
        elif self.vp_enter_ret >> 32 and self.seg_fault != SCRIPTED:
            why = f"vp_enter_ret={self.vp_enter_ret:#x}"
        elif cut is None and self.seg_fault != SCRIPTED:
            why = f"vp_enter_ret={self.vp_enter_ret:#x} with no host interrupt"
        else:
            return
        self.findings.record(
            "spurious_external_interrupt", cpu.index, self.name,
            f"host handler of vector {intr_info & arch.INTR_INFO_VECTOR_MASK:#x} run: {why}",
            cause=self.exit_cause())

    def exit_cause(self) -> tuple[int, str]:
        """The cause of an exit-handling finding: the TDH.VP.ENTER return (now) and the
        exit reason KVM derived from it."""
        name = arch.EXIT_REASON_NAMES.get(self.exit_reason & 0xFFFF, "?")
        return (self.env.now, f"TDH.VP.ENTER returned {self.vp_enter_ret:#x}, taken as "
                              f"exit reason {name}")

    def vmm_service_ns(self) -> int:
        """The userspace VMM answers the exit (`tdsim.vmm`); its service time."""
        service = self.vmm_service
        assert service is not None
        return service(self)

    # --- NMIs --------------------------------------------------------------------------
    def deliver_nmi(self, t: int) -> None:
        """The module injects the pending NMI at TD entry `t`; the guest runs its handler."""
        del self.module_fields["PEND_NMI"]  # (a field not set reads as 0)
        irq = self.irq
        irq.nmi_delivered(self, t)
        stat = self.stat
        stat["nmi.delivered"] += 1
        self.guest.irq_debt_ns += self.costs.guest_nmi_ns
        t0 = self.nmi_t0 if self.nmi_t0 is not None else t
        self.nmi_t0 = None
        stat["irq.taken.nmi"] += 1
        stat["irq.latency_ns_sum.nmi"] += t - t0
        irq.sample("nmi", t0, t - t0, self)
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(t, "nmi_delivered", self.cpu.index, self.name)

    def tdx_inject_nmi(self, cpu: HostCpu) -> None:
        """tdx_inject_nmi: ++stat.nmi_injections, TDH.VP.WR(PEND_NMI, 1), nmi_pending = 0.

        Everything pending beyond one NMI is dropped (PEND_NMI is a single bit), as is a new
        NMI while PEND_NMI is still set (the module has not delivered the previous one)."""
        dropped = self.nmi_pending - 1
        self.stat["nmi_injections"] += 1
        pend = self.module_fields.get("PEND_NMI", 0)
        if pend:
            dropped += 1
        self.irq.nmi_written(self, bool(pend))
        self.module.tdh_vp_wr(self, cpu, "PEND_NMI", 1)
        self.nmi_pending = 0
        if dropped:
            self.stat["nmi.coalesced"] += dropped

    # --- posted interrupts -------------------------------------------------------------
    def process_pir(self, t: int) -> None:
        """The CPU processes the PIR into the virtual APIC (at TD entry, or on the
        notification IPI while the TD runs); the guest runs its handlers (charged to its
        next compute period)."""
        self.pi_on = False
        self.pir = 0
        self.stat["pi_delivered"] += 1
        self.irq.taken(self, t)
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(t, "pi_delivered", self.cpu.index, self.name, vector=-1)

    def tdx_deliver_interrupt(self, vector: int, source: str) -> None:
        """tdx_deliver_interrupt -> __vmx_deliver_posted_interrupt: set the PIR bit, set ON,
        then kvm_vcpu_trigger_posted_interrupt: a notification IPI to a vCPU in guest mode,
        else kvm_vcpu_wake_up."""
        if not self.pi_test_and_set_pir(vector, source) or self.pi_on:
            return
        self.pi_on = True
        self.kvm_vcpu_trigger_posted_interrupt()

    def pi_test_and_set_pir(self, vector: int, source: str) -> bool:
        """pi_test_and_set_pir: set the vector's PIR bit; False if it was already set (the
        posting coalesces).  The one PIR write of both KVM's posting and the IOMMU's.

        (Simulation) A posting after the current entry's PIR processing (applied at the
        exit) first applies it: the guest runs, or has exited, with ON clear and the PIR
        drained."""
        if (self.seg_pi and self.seg_status == arch.TDX_SUCCESS
                and self.t_enter <= self.env.now):
            if self.seg_pi == SEG_PI_LATE:
                self.guest.irq_debt_ns += self.costs.guest_irq_ns
            self.seg_pi = SEG_PI_NONE
            self.process_pir(self.t_enter)
        bit = 1 << vector
        if self.pir & bit:
            self.stat["pi_coalesced"] += 1
            return False
        self.pir |= bit
        self.stat["pi_posted"] += 1
        self.irq.posted(self, vector, source)
        tracer = self.tracer
        if tracer is not None:
            cpu = self.cpu
            tracer.emit(self.env.now, "pi_posted", cpu.index if cpu else -1, self.name,
                        vector=vector, source=source)
        return True

    def kvm_vcpu_trigger_posted_interrupt(self) -> None:
        """kvm_vcpu_trigger_posted_interrupt: a vCPU in guest mode gets POSTED_INTR_VECTOR,
        processed without a TD exit; otherwise kvm_vcpu_wake_up.

        (Simulation) Before VM entry the notification, or the ON check still ahead, is
        recognised at TD entry (posted before the late check, an abort there leaves ON set
        for the next entry); during the run it arrives after costs.ipi_ns, and if the TD has
        exited by then ON waits for the next entry."""
        if self.phase == PH_SEG and self.seg_status == arch.TDX_SUCCESS:
            now = self.env.now
            if now < self.t_enter:
                if not self.seg_pi:
                    self.seg_pi = SEG_PI_LATE
            elif now < self.t_guest_end:
                seg0 = self.t_seg0
                ev = self.env.timeout(self.costs.ipi_ns)
                ev.callbacks.append(lambda _e: self.pi_notification(seg0))
        else:
            self.kvm_vcpu_wake_up()

    def iommu_post_interrupt(self, vector: int, source: str) -> None:
        """(Hardware) The IOMMU posts a device interrupt into the PI descriptor (VT-d
        posted-interrupt remapping; device_posting = "vtd"): the PIR bit; then, if ON is
        clear and SN is clear, ON and the notification vector NV to the CPU NDST -- with SN
        set only the PIR bit (``pi.sn_suppressed``: no ON, no notification; the next
        vmx_vcpu_pi_load sets ON).  NV = POSTED_INTR_VECTOR (the vCPU is loaded on NDST):
        taken in the guest without an exit if it is in the TD there, otherwise a host
        interrupt whose handler does nothing, ON waiting for the next entry (a halt poll
        sees ON at once).  NV = POSTED_INTR_WAKEUP_VECTOR: a host interrupt on NDST after
        ipi_ns running pi_wakeup_handler.

        Simplified: no urgent bit; a POSTED_INTR_VECTOR notification that misses the guest
        is not charged (its handler only acks it)."""
        if not self.pi_test_and_set_pir(vector, source) or self.pi_on:
            return
        if self.pi_sn:
            self.stat["pi.sn_suppressed"] += 1
            return
        self.pi_on = True
        if self.pi_nv == arch.POSTED_INTR_WAKEUP_VECTOR:
            ndst = self.percpu.cpus[self.pi_ndst]
            ev = self.env.timeout(self.costs.ipi_ns)
            ev.callbacks.append(lambda _e: self.pi_wakeup_notification(ndst))
            return
        phase = self.phase
        if phase == PH_SEG and self.seg_status == arch.TDX_SUCCESS:
            now = self.env.now
            if now < self.t_enter:
                if not self.seg_pi:  # tdx_vcpu_run's ON check is still ahead of it
                    self.seg_pi = SEG_PI_LATE
            elif now < self.t_guest_end:
                seg0 = self.t_seg0
                ev = self.env.timeout(self.costs.ipi_ns)
                ev.callbacks.append(lambda _e: self.pi_notification(seg0))
        elif phase == PH_POLL:
            self.disturb(WAKE)  # the polling loop's kvm_vcpu_check_block sees ON

    def pi_wakeup_notification(self, cpu: HostCpu) -> None:
        """POSTED_INTR_WAKEUP_VECTOR reaches `cpu` (NDST): a host interrupt there (a TD
        running on it exits), whose handler is pi_wakeup_handler."""
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env.now, "ipi", cpu.index, self.name, src_cpu=-1,
                        dst_cpu=cpu.index, why="pi_wakeup")
        cpu.host_irq(_HOST_IRQ_PI_WAKEUP)
        self.percpu.pi_wakeup_handler(cpu)

    def pi_notification(self, seg0: int) -> None:
        """POSTED_INTR_VECTOR reaches the CPU of a vCPU that was in the TD when the
        interrupt was posted: if it still runs the same entry, the CPU processes the PIR
        without a TD exit; otherwise the IPI is a plain host interrupt (already handled as
        such by the run loop) and ON waits for the next entry."""
        now = self.env.now
        if (self.phase == PH_SEG and self.t_seg0 == seg0 and self.pi_on
                and self.t_enter <= now < self.t_guest_end):
            self.guest.irq_debt_ns += self.costs.guest_irq_ns
            self.process_pir(now)

    def tdx_interrupt_allowed(self) -> bool:
        """tdx_interrupt_allowed: false only after a HLT TDVMCALL with R12 != 0 (the guest
        halted with interrupts disabled); otherwise KVM assumes interrupts are allowed."""
        return not (self.exit_reason == arch.EXIT_REASON_HLT and self.vp_enter_args.r12)

    def tdx_protected_apic_has_interrupt(self, cpu: HostCpu) -> bool:
        """tdx_protected_apic_has_interrupt: the PI descriptor has one pending; else (HLT
        with interrupts enabled) TDH.VP.RD of the state details says the virtual APIC has
        one."""
        if self.pi_on or self.pir:
            return True
        if self.vp_enter_args.r12 == 0 and self.exit_reason == arch.EXIT_REASON_HLT:
            _, details = self.module.tdh_vp_rd(self, cpu, "STATE_DETAILS_NON_ARCH")
            return bool(details & 1)
        return False


_BASE_ENTER_EXIT = HostStateStrategy.vcpu_enter_exit
_HOST_IRQ_PI_WAKEUP = HOST_IRQ["pi_wakeup"]
