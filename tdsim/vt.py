"""The vendor side of a TD vCPU as the generic run loop sees it (arch/x86/kvm/vmx/main.c's
``vt_x86_ops`` dispatching to tdx.c), and ``tdx_handle_exit``, which sends each exit to its
handler in tdx.c: the TDVMCALLs (`tdsim.tdvmcall`) and the private-page EPT violations
(`tdsim.sept`).  It sits above both so that neither imports the other's caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import arch, sept, tdvmcall
from .kvm_tdx import VcpuTdx
from .kvm_x86 import EXIT_FASTPATH_NONE, KvmX86Ops

if TYPE_CHECKING:
    from .host import HostCpu

_VALID = arch.TDX_EXIT_REASON_VALID_STATUSES
_ERROR_OR_NR = arch.TDX_ERROR | arch.TDX_NON_RECOVERABLE
_STATUS = arch.TDX_SEAMCALL_STATUS_MASK
_TDVMCALL_REASONS = tdvmcall.EXIT_REASONS
# the reasons dispatched to a handler by reason at all (the NMI and IRQ paths have their own
# oracles)
_DISPATCHED = _TDVMCALL_REASONS | {arch.EXIT_REASON_EPT_VIOLATION, arch.EXIT_REASON_OTHER_SMI}
# EXTERNAL_INTERRUPT exits by the host interrupt that caused them
_IRQ_EXIT_KEYS = {w: f"irq_exits.{w}" for w in
                  ("tick", "timer", "kick", "resched", "flush_ipi", "other")}


def tdx_handle_exit(vcpu: VcpuTdx, cpu: HostCpu, fastpath: int) -> int:
    """tdx_handle_exit: 1 to re-enter, 0 to exit to userspace, < 0 for an error.  The status
    checks read the raw ``vp_enter_ret``; the dispatch reads the derived ``exit_reason``."""
    costs = vcpu.costs
    cpu.acc += costs.exit_handling_ns
    if fastpath != EXIT_FASTPATH_NONE:
        return 1
    ret = vcpu.vp_enter_ret
    reason = vcpu.exit_reason
    basic = reason & 0xFFFF
    if ret >> 32 or ret == arch.EXIT_REASON_EPT_MISCONFIG or (
            reason & arch.VMX_EXIT_REASONS_FAILED_VMENTRY):
        r = tdx_handle_exit_status(vcpu, cpu, ret, reason, basic)
        if r is not None:
            return r
    if basic in _TDVMCALL_REASONS:
        return tdvmcall.dispatch_tdvmcall_exit(vcpu, cpu, basic)
    if basic == arch.EXIT_REASON_EXTERNAL_INTERRUPT:
        cpu.acc += costs.host_irq_ns  # handle_exit_irqoff ran the host handler
        vcpu.stat["irq_exits"] += 1
        vcpu.stat[_IRQ_EXIT_KEYS.get(vcpu.last_irq_source, "irq_exits.other")] += 1
        return 1
    if basic == arch.EXIT_REASON_EPT_VIOLATION:
        if vcpu.seg_fault == "zero_step":  # the module's synthesized exit
            return tdx_handle_zero_step_exit(vcpu, cpu)
        return sept.tdx_handle_ept_violation(vcpu, cpu)
    if basic == arch.EXIT_REASON_TRIPLE_FAULT:
        vcpu.run_exit_reason = arch.KVM_EXIT_SHUTDOWN
        return 0
    if basic == arch.EXIT_REASON_EXCEPTION_NMI:  # a host NMI, handled at the exit
        cpu.acc += costs.host_nmi_ns
        return 1
    if basic == arch.EXIT_REASON_OTHER_SMI:
        return 1
    vcpu.run_exit_reason = arch.KVM_EXIT_INTERNAL_ERROR  # unhandled exit
    return 0


def tdx_handle_exit_status(vcpu: VcpuTdx, cpu: HostCpu, ret: int, reason: int,
                           basic: int) -> int | None:
    """tdx_handle_exit's checks of a non-success return, in order; None = go on to the
    dispatch.  KVM_BUG_ON marks the VM bugged (every vCPU then leaves with -EIO at its next
    request check)."""
    if ret == arch.EXIT_REASON_EPT_MISCONFIG:
        # a genuine EPT misconfig must not happen for a TD
        vcpu.vm.kvm_vm_bugged(vcpu)
        vcpu.run_exit_reason = 0
        return -arch.EIO
    if (ret & arch.TDX_SW_ERROR) == arch.TDX_SW_ERROR:
        vcpu.vm.kvm_vm_bugged(vcpu)
        vcpu.run_exit_reason = arch.KVM_EXIT_INTERNAL_ERROR
        return 0
    if reason != arch.EXIT_REASON_INVALID and reason & arch.VMX_EXIT_REASONS_FAILED_VMENTRY:
        vcpu.run_exit_reason = arch.KVM_EXIT_FAIL_ENTRY
        return 0
    if ret & _ERROR_OR_NR and basic != arch.EXIT_REASON_TRIPLE_FAULT:
        vcpu.run_exit_reason = arch.KVM_EXIT_INTERNAL_ERROR
        return 0
    if (ret & _STATUS) not in _VALID and basic in _DISPATCHED:
        vcpu.findings.record(
            "error_status_dispatched", cpu.index, vcpu.name,
            f"vp_enter_ret={ret:#x} dispatched as exit reason "
            f"{arch.EXIT_REASON_NAMES.get(basic, basic)}", cause=vcpu.exit_cause())
    return None


def tdx_handle_zero_step_exit(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """tdx_handle_ept_violation for the module's synthesized zero-step exit: the page is
    mapped by the fault path; the guest re-executes the instruction."""
    cpu.acc += vcpu.costs.ept_violation_ns
    vcpu.stat["ept_violation"] += 1
    return 1


TDX_X86_OPS = KvmX86Ops(
    vcpu_load=VcpuTdx.tdx_vcpu_load,
    vcpu_put=VcpuTdx.tdx_vcpu_put,
    prepare_switch_to_guest=VcpuTdx.tdx_prepare_switch_to_guest,
    vcpu_pre_run=VcpuTdx.tdx_vcpu_pre_run,
    vcpu_run=VcpuTdx.tdx_vcpu_run,
    handle_exit_irqoff=VcpuTdx.tdx_handle_exit_irqoff,
    handle_exit=tdx_handle_exit,
    cancel_injection=VcpuTdx.tdx_cancel_injection,
    inject_nmi=VcpuTdx.tdx_inject_nmi,
    interrupt_allowed=VcpuTdx.tdx_interrupt_allowed,
    protected_apic_has_interrupt=VcpuTdx.tdx_protected_apic_has_interrupt,
    deliver_interrupt=VcpuTdx.tdx_deliver_interrupt,
    complete_userspace_io=tdvmcall.complete_userspace_io,
)
