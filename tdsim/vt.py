"""The vendor side of a TD vCPU as the generic run loop sees it (arch/x86/kvm/vmx/main.c's
``vt_x86_ops`` dispatching to tdx.c), and ``tdx_handle_exit``, which sends each exit to its
handler in tdx.c: the TDVMCALLs (`tdsim.tdvmcall`), the EPT violations (private-page faults in
`tdsim.sept`), and the error statuses of TDH.VP.ENTER, each leaving in ``vcpu.run`` the fields
the kernel fills (``internal``, ``fail_entry``, ``ex``, ``memory_fault``).  It sits above both
so that neither imports the other's caller.

A scripted guest's vCPU uses `SCRIPTED_TDX_X86_OPS`, whose ``handle_exit`` also tells the
guest which register writes are KVM's and records the outcome of a scripted TDH.VP.ENTER
(`tdsim.program`); other vCPUs pay nothing for it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from . import arch, sept, tdvmcall
from .guest import SHARED_BIT
from .kvm_tdx import TdxPerCpu, VcpuTdx
from .kvm_vmx import VcpuVmx, vmx_disable_virtualization_cpu
from .kvm_x86 import EXIT_FASTPATH_NONE, KvmX86Ops
from .segment import PH_SEG
from .tdx_module import SCRIPTED

if TYPE_CHECKING:
    from .host import HostCpu

PAGE_SIZE = 4096
_VALID = arch.TDX_EXIT_REASON_VALID_STATUSES
_ERROR_OR_NR = arch.TDX_ERROR | arch.TDX_NON_RECOVERABLE
_STATUS = arch.TDX_SEAMCALL_STATUS_MASK
_TDVMCALL_REASONS = tdvmcall.EXIT_REASONS
# the reasons dispatched to a handler by reason at all (the NMI and IRQ paths have their own
# oracles)
_DISPATCHED = _TDVMCALL_REASONS | {arch.EXIT_REASON_EPT_VIOLATION, arch.EXIT_REASON_OTHER_SMI}
# EXTERNAL_INTERRUPT exits by the host interrupt that caused them
_IRQ_EXIT_KEYS = {w: f"irq_exits.{w}" for w in
                  ("tick", "timer", "kick", "resched", "flush_ipi", "other", "pi_wakeup")}


def vt_disable_virtualization_cpu(percpu: TdxPerCpu, vmx_vcpus: list[VcpuVmx],
                                  cpu: HostCpu) -> None:
    """vt_disable_virtualization_cpu (main.c): tdx_disable_virtualization_cpu (TDX is
    enabled), then vmx_disable_virtualization_cpu."""
    percpu.tdx_disable_virtualization_cpu(cpu)
    vmx_disable_virtualization_cpu(vmx_vcpus, cpu)


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
        r = check_exit_status(vcpu, cpu, ret, reason, basic)
        if r is not None:
            return r
    if basic in _TDVMCALL_REASONS:
        return tdvmcall.dispatch_tdvmcall_exit(vcpu, cpu, basic)
    if basic == arch.EXIT_REASON_EXTERNAL_INTERRUPT:  # (the host handler ran IRQs-off)
        vcpu.stat["irq_exits"] += 1
        vcpu.stat[_IRQ_EXIT_KEYS.get(vcpu.last_irq_source, "irq_exits.other")] += 1
        return 1
    if basic == arch.EXIT_REASON_EPT_VIOLATION:
        fault = vcpu.seg_fault
        if fault == "zero_step":  # the module's synthesized exit
            return handle_zero_step_exit(vcpu, cpu)
        return tdx_handle_ept_violation(vcpu, cpu)
    if basic == arch.EXIT_REASON_TRIPLE_FAULT:
        vcpu.run.exit_reason = vcpu.run_exit_reason = arch.KVM_EXIT_SHUTDOWN
        return 0
    if basic == arch.EXIT_REASON_EXCEPTION_NMI:
        return tdx_handle_exception_nmi(vcpu, cpu)
    if basic == arch.EXIT_REASON_OTHER_SMI:
        return 1
    return kvm_prepare_unexpected_reason_exit(vcpu, cpu, ret)


def check_exit_status(vcpu: VcpuTdx, cpu: HostCpu, ret: int, reason: int,
                           basic: int) -> int | None:
    """tdx_handle_exit's checks of a non-success return, in order; None = go on to the
    dispatch.  KVM_BUG_ON marks the VM bugged (every vCPU then leaves with -EIO at its next
    request check)."""
    if ret == arch.EXIT_REASON_EPT_MISCONFIG:
        # a genuine EPT misconfig must not happen for a TD: KVM_BUG_ON(1)
        vcpu.vm.kvm_bug_on(vcpu, "tdx_handle_exit")
        vcpu.run_exit_reason = 0
        return -arch.EIO
    if (ret & arch.TDX_SW_ERROR) == arch.TDX_SW_ERROR:
        vcpu.vm.kvm_bug_on(vcpu, "tdx_handle_exit")  # KVM_BUG_ON(!kvm_rebooting)
        return kvm_prepare_unexpected_reason_exit(vcpu, cpu, ret)
    if reason != arch.EXIT_REASON_INVALID and reason & arch.VMX_EXIT_REASONS_FAILED_VMENTRY:
        # tdx_failed_vmentry: the derived 32-bit reason (bit 31 set) and the CPU of the entry;
        # the guest state of a TD (no off-TD debug) is protected, so the status must be
        # non-recoverable
        if not ret & arch.TDX_NON_RECOVERABLE:
            vcpu.vm.warn_on_once("tdx_handle_exit")
        run = vcpu.run
        run.exit_reason = vcpu.run_exit_reason = arch.KVM_EXIT_FAIL_ENTRY
        fail = run.fail_entry
        fail["hardware_entry_failure_reason"] = reason
        fail["cpu"] = cpu.index
        return 0
    if ret & _ERROR_OR_NR and basic != arch.EXIT_REASON_TRIPLE_FAULT:
        return kvm_prepare_unexpected_reason_exit(vcpu, cpu, ret)
    if basic != arch.EXIT_REASON_TRIPLE_FAULT and ret & _STATUS:
        vcpu.vm.warn_on_once("tdx_handle_exit")
    if (ret & _STATUS) not in _VALID and basic in _DISPATCHED:
        vcpu.findings.record(
            "error_status_dispatched", cpu.index, vcpu.name,
            f"vp_enter_ret={ret:#x} dispatched as exit reason "
            f"{arch.EXIT_REASON_NAMES.get(basic, basic)}", cause=vcpu.exit_cause())
    return None


def kvm_prepare_unexpected_reason_exit(vcpu: VcpuTdx, cpu: HostCpu, ret: int) -> int:
    """The unhandled exit (tdx.c's unhandled_exit; today kvm_prepare_unexpected_reason_exit):
    KVM_EXIT_INTERNAL_ERROR, suberror KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON, ndata 2:
    the raw vp_enter_ret and the CPU of the last VM entry."""
    run = vcpu.run
    run.exit_reason = vcpu.run_exit_reason = arch.KVM_EXIT_INTERNAL_ERROR
    internal = run.internal
    internal["suberror"] = arch.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON
    internal["ndata"] = 2
    internal["data"] = [ret, cpu.index]
    return 0


def tdx_handle_exception_nmi(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """tdx_handle_exception_nmi: on the interruption information (R9 of the exit).  An NMI
    (handled in tdx_vcpu_enter_exit) or a machine check (handled IRQs-off) -> re-enter;
    anything else -> KVM_EXIT_EXCEPTION with the vector and error code 0."""
    intr_info = vcpu.exit_intr_info
    kind = intr_info & (arch.INTR_INFO_VALID_MASK | arch.INTR_INFO_INTR_TYPE_MASK
                        | arch.INTR_INFO_VECTOR_MASK)
    if arch.is_nmi(intr_info) or kind == (arch.INTR_INFO_VALID_MASK
                                          | arch.INTR_TYPE_HARD_EXCEPTION | arch.MC_VECTOR):
        return 1
    run = vcpu.run
    run.exit_reason = vcpu.run_exit_reason = arch.KVM_EXIT_EXCEPTION
    run.ex["exception"] = intr_info & arch.INTR_INFO_VECTOR_MASK
    run.ex["error_code"] = 0
    return 0


def tdx_handle_ept_violation(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """tdx_handle_ept_violation: GPA R8, exit qualification RCX, extended exit qualification
    RDX, as the TDX module reported them (the guest's private-fault stream sets them in
    `GuestVcpu.ept_violation_regs`; a scripted outcome sets its own).

    Private GPA: a pending-page violation without protection bits (the guest touched a page
    it has not accepted) kills the VM (kvm_vm_dead, -EIO); otherwise the access is taken as
    a write.  Shared GPA: an instruction fetch is a KVM bug (-EIO).  Then the fault path:
    if the GFN's memory attribute (KVM_SET_MEMORY_ATTRIBUTES) differs from the access,
    KVM_EXIT_MEMORY_FAULT (flags PRIVATE for a private access, the page's GPA and size) and
    KVM_RUN returns -EFAULT; else the page is mapped and the guest re-executes.

    Simplifications: the statistical private-fault stream's pages are always private in the
    memory attributes (its fault GPAs overlap the statistical MapGPA range, which does not
    track attributes) and go to the TDH.MEM.PAGE.AUG local retry loop
    (`tdsim.sept.private_fault_retry_loop`); a scripted outcome's private page is mapped at
    once."""
    args = vcpu.vp_enter_args
    gpa, exit_qual, ext_qual = args.r8, args.rcx, args.rdx
    private = not gpa & SHARED_BIT
    if private:
        if ((ext_qual & arch.TDX_EXT_EXIT_QUAL_TYPE_MASK)
                == arch.TDX_EXT_EXIT_QUAL_TYPE_PENDING_EPT_VIOLATION
                and not exit_qual & arch.EPT_VIOLATION_PROT_MASK):
            kvm_vm_dead(vcpu)
            vcpu.run_exit_reason = 0
            return -arch.EIO
        if vcpu.seg_fault != SCRIPTED:  # the guest's private-fault stream
            return sept.private_fault_retry_loop(vcpu, cpu)
    elif exit_qual & arch.EPT_VIOLATION_ACC_INSTR:
        vcpu.vm.kvm_bug_on(vcpu, "tdx_handle_ept_violation")
        vcpu.run_exit_reason = 0
        return -arch.EIO
    gfn = (gpa & ~SHARED_BIT) >> 12
    costs = vcpu.costs
    if vcpu.vm.memory_attributes.is_private(gfn) != private:
        return kvm_prepare_memory_fault_exit(vcpu, gfn << 12, PAGE_SIZE, private)
    cpu.acc += (costs.kvm_private_fault_ns + costs.tdh_mem_page_aug_ns if private
                else costs.ept_violation_ns)
    return 1


def kvm_prepare_memory_fault_exit(vcpu: VcpuTdx, gpa: int, size: int, private: bool) -> int:
    """kvm_prepare_memory_fault_exit: KVM_EXIT_MEMORY_FAULT with flags (PRIVATE for a
    private access), GPA and size; the fault path returns -EFAULT out of KVM_RUN."""
    run = vcpu.run
    run.exit_reason = vcpu.run_exit_reason = arch.KVM_EXIT_MEMORY_FAULT
    mf = run.memory_fault
    mf["flags"] = arch.KVM_MEMORY_EXIT_FLAG_PRIVATE if private else 0
    mf["gpa"] = gpa
    mf["size"] = size
    return -arch.EFAULT


def kvm_vm_dead(vcpu: VcpuTdx) -> None:
    """kvm_vm_dead (virt/kvm/kvm_main.c): KVM_REQ_VM_DEAD on every vCPU of the VM (those in
    the guest are kicked); every later KVM_RUN fails with -EIO."""
    for other in vcpu.vm.vcpus:
        other.kvm_make_request(arch.KVM_REQ_VM_DEAD)
        if other is not vcpu and other.phase == PH_SEG:
            other.kvm_vcpu_kick()


def handle_zero_step_exit(vcpu: VcpuTdx, cpu: HostCpu) -> int:
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
    handle_exit_irqoff=VcpuTdx.vt_handle_exit_irqoff,
    handle_exit=tdx_handle_exit,
    cancel_injection=VcpuTdx.vt_cancel_injection,
    inject_nmi=VcpuTdx.tdx_inject_nmi,
    interrupt_allowed=VcpuTdx.tdx_interrupt_allowed,
    protected_apic_has_interrupt=VcpuTdx.tdx_protected_apic_has_interrupt,
    deliver_interrupt=VcpuTdx.tdx_deliver_interrupt,
    complete_userspace_io=tdvmcall.complete_userspace_io,
)


def tdx_handle_exit_scripted(vcpu: VcpuTdx, cpu: HostCpu, fastpath: int) -> int:
    """tdx_handle_exit for a scripted guest's vCPU: register writes from here on are KVM's
    (the call record's ``regs_written``), and a scripted TDH.VP.ENTER outcome is recorded
    with what KVM made of it."""
    guest = vcpu.call_log
    guest.begin_exit()
    r = tdx_handle_exit(vcpu, cpu, fastpath)
    if vcpu.seg_fault == SCRIPTED:
        basic = vcpu.exit_reason & 0xFFFF
        guest.finish_vp_enter(arch.EXIT_REASON_NAMES.get(basic, f"{basic:#x}"), r, vcpu.run)
    return r


SCRIPTED_TDX_X86_OPS = replace(TDX_X86_OPS, handle_exit=tdx_handle_exit_scripted)
