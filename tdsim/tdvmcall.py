"""KVM's TDVMCALL handling (arch/x86/kvm/vmx/tdx.c, with the x86.c helpers it calls).

A TDVMCALL exits with EXIT_REASON_TDCALL; ``tdx_to_vmx_exit_reason`` turns the instruction
leaves into the exit reason a VMX guest would have made (CPUID, HLT, IO, MSR, MMIO as
EPT_MISCONFIG; R10 != 0 a KVM hypercall as VMCALL), and ``tdx_handle_exit`` sends each to its
handler: ``tdx_emulate_cpuid``, ``kvm_emulate_halt_noskip``, ``tdx_emulate_io``,
``kvm_emulate_rdmsr/wrmsr`` (`tdsim.tdvmcall_msr`), ``tdx_emulate_mmio``,
``tdx_emulate_vmcall`` (`tdsim.kvm_hypercall`), or ``handle_tdvmcall`` for the GHCI leaves
that stay EXIT_REASON_TDCALL.  Each handler follows the kernel's order of checks and status
codes (docs/tdvmcall.md; ``[kvm] tdvmcall_abi`` selects the generation,
`tdsim.tdvmcall_abi`) and returns 1 (resume the guest: the call is complete) or 0 (exit to
userspace with ``vcpu.run`` filled and, where KVM sets one, a completion callback in
``vcpu.pending_completion``, run by `complete_userspace_io` at the next KVM_RUN; it may return
0 again, as MapGPA does for its next 2 MiB chunk, or < 0 to fail KVM_RUN).

The GHCI sub-functions are declared once, in `LEAVES`: number, GHCI name, the alias a scripted
guest may use, and how KVM handles it.  The scripted-guest compiler, the call records, the
dispatch of ``handle_tdvmcall`` and docs/tdvmcall.md's table derive from it.

Registers.  The handlers read and write ``vcpu.gprs``.  With ``[kvm] regs_layout =
"in_place"`` that is ``vp_enter_args`` itself, laid out like KVM's ``regs[]``, so nothing is
copied on exit or entry; with ``"copy"`` the 13 registers are copied to ``regs[]`` after every
exit and back before every entry.  In both layouts the generic emulation paths still move
values between registers (RCX <- R12 for an MSR access; RAX, RBX, RCX, RDX, RSI <- R10..R14
for a hypercall; the result to R10/R11).  Every move is counted (``regs.copies``,
``regs.bytes``, 8 bytes each) and costs ``costs.regs_copy_ns``.  A register KVM does not
write goes back to the guest as the guest passed it (R10 = 0 = SUCCESS, R11 = the leaf):
KVM writes R10 only for a status and R11 only for data.

Fields of ``kvm_run`` that KVM does not write keep what the last exit left there (the data of
an MMIO read exit, ``hypercall.args[3..5]``), as in the kernel's shared page.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import arch
from .arch import KVM_REQ_NMI
from .guest import SHARED_BIT
from .kvm_hypercall import tdx_emulate_vmcall
from .tdvmcall_abi import GENERATIONS
from .tdvmcall_insn import (
    is_private_gpa,
    kvm_emulate_halt_noskip,
    tdx_emulate_cpuid,
    tdx_emulate_io,
    tdx_emulate_mmio,
)
from .tdvmcall_msr import init_msrs, kvm_emulate_rdmsr, kvm_emulate_wrmsr

if TYPE_CHECKING:
    from .host import HostCpu
    from .kvm_tdx import VcpuTdx

U64 = (1 << 64) - 1
PAGE_SIZE = 4096
TDX_MAP_GPA_MAX_LEN = 2 * 1024 * 1024
# the positive errnos the current MapGPA completion takes from userspace
EAGAIN = 11
EINVAL = 22
KVM_HC_MAP_GPA_RANGE = arch.KVM_HC_MAP_GPA_RANGE
KVM_MAP_GPA_RANGE_ENCRYPTED = 1 << 4
KVM_MAP_GPA_RANGE_DECRYPTED = 0
KVM_EXIT_HYPERCALL_LONG_MODE = 1 << 0

# The exit reasons tdx_to_vmx_exit_reason gives a TDVMCALL; tdx_handle_exit sends these here.
EXIT_REASONS = frozenset({
    arch.EXIT_REASON_CPUID, arch.EXIT_REASON_HLT, arch.EXIT_REASON_IO_INSTRUCTION,
    arch.EXIT_REASON_MSR_READ, arch.EXIT_REASON_MSR_WRITE, arch.EXIT_REASON_EPT_MISCONFIG,
    arch.EXIT_REASON_VMCALL, arch.EXIT_REASON_TDCALL,
})

Handler = Callable[["VcpuTdx", "HostCpu", Any], int]
Completion = Callable[["VcpuTdx", "HostCpu"], int]
_ALL_GENERATIONS = tuple(GENERATIONS)


@dataclass(frozen=True)
class Leaf:
    """One GHCI TDVMCALL sub-function (R11 with R10 = 0)."""

    number: int
    name: str                     # GHCI spelling (call records)
    alias: str                    # scripted guests' r11 name, and the tdvmcall.<kind> metric
    handler: Handler | None = None  # handle_tdvmcall's handler; None: not a handle_tdvmcall leaf
    abi: tuple[str, ...] = _ALL_GENERATIONS  # generations whose KVM handles it
    doc: str = ""


# --- the handlers of the leaves that stay EXIT_REASON_TDCALL (defined below, declared in
# LEAVES at the end of the module) -----------------------------------------------------------


def handle_tdvmcall(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """handle_tdvmcall: dispatch on R11 among the leaves this generation handles; anything
    else -> SUBFUNC_UNSUPPORTED."""
    leaf = _HANDLED.get(g.r11)
    if leaf is not None and vcpu.config.tdvmcall_abi in leaf.abi and leaf.handler is not None:
        return leaf.handler(vcpu, cpu, g)
    g.r10 = arch.TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED
    return 1


# --- per-call bookkeeping and the dispatch by converted reason --------------------------------
def _account_moves(vcpu: VcpuTdx, cpu: HostCpu) -> None:
    """Count and charge the register moves a handler made (``vcpu.regs_moves``, 8 bytes
    each: ``regs.bytes`` is derived as 8 x ``regs.copies`` when metrics are collected)."""
    n = vcpu.regs_moves
    vcpu.regs_moves = 0
    vcpu.stat["regs.copies"] += n
    cpu.acc += n * vcpu.costs.regs_copy_ns


def dispatch_tdvmcall_exit(vcpu: VcpuTdx, cpu: HostCpu, basic: int) -> int:
    """The TDVMCALL cases of tdx_handle_exit, by the reason tdx_to_vmx_exit_reason derived,
    with the model's per-call work around them: the completion oracle, the call's counter
    and trace event, its handling cost (costs.tdvmcall_*_ns for CPUID, MSR, hypercall and
    HLT; costs.tdvmcall_userspace_ns when the call goes to userspace; costs.tdvmcall_simple_ns
    for a call KVM answers without emulation), and the guest's next compute period."""
    guest = vcpu.guest
    if not guest.awaiting:
        vcpu.findings.record("tdvmcall_completion", cpu.index, vcpu.name,
                             f"completing a TDVMCALL the guest did not issue "
                             f"(vp_enter_ret={vcpu.vp_enter_ret:#x})",
                             cause=vcpu.exit_cause())
    vcpu.stat[guest.tdvmcall_key] += 1
    tracer = vcpu.tracer
    if tracer is not None:
        tracer.emit(vcpu.env._now, "tdvmcall", cpu.index, vcpu.name, leaf=guest.kind)
    handler, cost = vcpu.tdvmcall_handlers[basic]
    r = handler(vcpu, cpu, vcpu.gprs)
    if cost is not None:
        cpu.acc += cost
    else:  # answered without emulation, or gone to userspace
        cpu.acc += vcpu.costs.tdvmcall_simple_ns if r else vcpu.costs.tdvmcall_userspace_ns
    if vcpu.regs_moves:
        _account_moves(vcpu, cpu)
    if r > 0:
        guest.next_period()
    else:
        vcpu.run_exit_reason = vcpu.run.exit_reason
        vcpu.tdvmcall_outstanding = True
    return r


def complete_userspace_io(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """kvm_arch_vcpu_ioctl_run's call of vcpu->arch.complete_userspace_io (taken and cleared
    first): 1 = go on into the guest (the call completes), 0 = back to userspace (MapGPA's
    next chunk), < 0 = KVM_RUN fails with it (today's MapGPA completion, for a
    ``hypercall.ret`` it does not accept)."""
    cui = vcpu.pending_completion
    r = 1
    if cui is not None:
        vcpu.pending_completion = None
        r = cui(vcpu, cpu)
        if vcpu.regs_moves:
            _account_moves(vcpu, cpu)
    if r > 0:
        if vcpu.tdvmcall_outstanding:
            vcpu.tdvmcall_outstanding = False
            vcpu.guest.next_period()
    elif r == 0:
        cpu.acc += vcpu.costs.tdvmcall_userspace_ns
        vcpu.run_exit_reason = vcpu.run.exit_reason
    else:
        vcpu.run_exit_reason = 0  # KVM_RUN returned an error, not an exit
        log = vcpu.call_log
        if log is not None:
            log.record_kvm_run_error(r)
    return r


def init_vcpu(vcpu: VcpuTdx) -> None:
    """KVM's emulated MSR and x2APIC state of a new vCPU (vCPU 0 is the BSP), the call log
    of a scripted guest, and the handler of each converted reason with its handling cost
    (None: by whether it answered in the kernel)."""
    costs = vcpu.costs
    vcpu.tdvmcall_handlers = {
        arch.EXIT_REASON_CPUID: (tdx_emulate_cpuid, costs.tdvmcall_cpuid_ns),
        arch.EXIT_REASON_MSR_READ: (kvm_emulate_rdmsr, costs.tdvmcall_msr_ns),
        arch.EXIT_REASON_MSR_WRITE: (kvm_emulate_wrmsr, costs.tdvmcall_msr_ns),
        arch.EXIT_REASON_VMCALL: (tdx_emulate_vmcall, costs.tdvmcall_hypercall_ns),
        arch.EXIT_REASON_HLT: (kvm_emulate_halt_noskip, costs.tdvmcall_hlt_ns),
        arch.EXIT_REASON_IO_INSTRUCTION: (tdx_emulate_io, None),
        arch.EXIT_REASON_EPT_MISCONFIG: (tdx_emulate_mmio, None),
        arch.EXIT_REASON_TDCALL: (handle_tdvmcall, None),
    }
    init_msrs(vcpu)
    vcpu.call_log = vcpu.guest if hasattr(vcpu.guest, "record_exit") else None


def kvm_vcpu_is_legal_gpa(vcpu: VcpuTdx, gpa: int) -> bool:
    """kvm_vcpu_is_legal_gpa: no bit at or above the guest MAXPHYADDR (its CPUID,
    `tdsim.kvm_cpuid`)."""
    return bool(0 <= gpa < 1 << vcpu.vm.cpuid.maxphyaddr)


# --- the GHCI leaves that stay EXIT_REASON_TDCALL ------------------------------------------
def tdx_map_gpa(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """tdx_map_gpa: GPA R12, size R13.  Checks in KVM's order: KVM_CAP_EXIT_HYPERCALL
    (SUBFUNC_UNSUPPORTED); overflow or empty, a first or last byte beyond the guest
    MAXPHYADDR, shared-bit mismatch (INVALID_OPERAND); 4 KiB alignment (ALIGN_ERROR).  On
    error R11 = the GPA as given; else the first <= 2 MiB chunk goes to userspace."""
    gpa, size = g.r12, g.r13
    last = (gpa + size - 1) & U64
    if not vcpu.vm.hypercall_exit_enabled:
        ret = arch.TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED
    elif ((gpa + size) & U64 <= gpa or not kvm_vcpu_is_legal_gpa(vcpu, gpa)
          or not kvm_vcpu_is_legal_gpa(vcpu, last)
          or is_private_gpa(gpa) != is_private_gpa(last)):
        ret = arch.TDVMCALL_STATUS_INVALID_OPERAND
    elif gpa & (PAGE_SIZE - 1) or size & (PAGE_SIZE - 1):
        ret = arch.TDVMCALL_STATUS_ALIGN_ERROR
    else:
        vcpu.map_gpa_end = gpa + size
        vcpu.map_gpa_next = gpa
        __tdx_map_gpa(vcpu)
        return 0
    g.r10 = ret
    g.r11 = gpa
    return 1


def __tdx_map_gpa(vcpu: VcpuTdx) -> None:
    """__tdx_map_gpa: KVM_EXIT_HYPERCALL(KVM_HC_MAP_GPA_RANGE) for the next <= 2 MiB: GPA
    without the shared bit, pages, ENCRYPTED for a private range; ``ret`` preset to 0;
    args[3..5] are not written."""
    gpa = vcpu.map_gpa_next
    size = min(vcpu.map_gpa_end - gpa, TDX_MAP_GPA_MAX_LEN)
    run = vcpu.run
    run.exit_reason = arch.KVM_EXIT_HYPERCALL
    hc = run.hypercall
    hc["nr"] = KVM_HC_MAP_GPA_RANGE
    hc["ret"] = 0
    args = hc.setdefault("args", [0] * 6)
    args[0] = gpa & ~SHARED_BIT
    args[1] = size // PAGE_SIZE
    args[2] = (KVM_MAP_GPA_RANGE_ENCRYPTED if is_private_gpa(gpa)
               else KVM_MAP_GPA_RANGE_DECRYPTED)
    hc["flags"] = KVM_EXIT_HYPERCALL_LONG_MODE
    vcpu.pending_completion = tdx_complete_vmcall_map_gpa


def tdx_complete_vmcall_map_gpa(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """tdx_complete_vmcall_map_gpa.  A nonzero ``hypercall.ret`` ends the call with R11 =
    the GPA not yet mapped: today, positive EAGAIN -> RETRY, positive EINVAL ->
    INVALID_OPERAND, and any other value fails KVM_RUN with -EINVAL (no register written);
    in v6.16 and before, any nonzero value -> INVALID_OPERAND.  Otherwise the next chunk,
    unless an interrupt or NMI is pending (kvm_vcpu_has_events without the RVI check: the PI
    descriptor, KVM_REQ_NMI / nmi_pending) -> RETRY with R11 = the next GPA; after the last
    chunk nothing is written (the guest sees R10 = 0 and its own R11)."""
    g = vcpu.gprs
    ret = vcpu.run.hypercall["ret"] & U64
    if ret:
        if GENERATIONS[vcpu.config.tdvmcall_abi].map_gpa_errno_abi:
            if ret == EAGAIN:
                g.r10 = arch.TDVMCALL_STATUS_RETRY
            elif ret == EINVAL:
                g.r10 = arch.TDVMCALL_STATUS_INVALID_OPERAND
            else:
                return -arch.EINVAL
        else:
            g.r10 = arch.TDVMCALL_STATUS_INVALID_OPERAND
        g.r11 = vcpu.map_gpa_next
        return 1
    vcpu.map_gpa_next += TDX_MAP_GPA_MAX_LEN
    if vcpu.map_gpa_next >= vcpu.map_gpa_end:
        return 1
    if vcpu.pi_on or vcpu.pir or vcpu.requests & KVM_REQ_NMI or vcpu.nmi_pending:
        g.r10 = arch.TDVMCALL_STATUS_RETRY
        g.r11 = vcpu.map_gpa_next
        return 1
    __tdx_map_gpa(vcpu)
    return 0


def tdx_report_fatal_error(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """tdx_report_fatal_error: KVM_EXIT_SYSTEM_EVENT, type KVM_SYSTEM_EVENT_TDX_FATAL, 16
    registers in VCPU_REGS order (RAX = vp_enter_ret, RSP = RBP = 0).  No completion."""
    run = vcpu.run
    run.exit_reason = arch.KVM_EXIT_SYSTEM_EVENT
    ev = run.system_event
    ev["type"] = arch.KVM_SYSTEM_EVENT_TDX_FATAL
    ev["ndata"] = 16
    ev["data"] = [vcpu.vp_enter_ret, g.rcx, g.rdx, g.rbx, 0, 0, g.rsi, g.rdi,
                  g.r8, g.r9, g.r10, g.r11, g.r12, g.r13, g.r14, g.r15]
    return 0


def tdx_get_td_vm_call_info(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """tdx_get_td_vm_call_info: leaf R12 = 0 in the kernel (R11..R14 = 0, SUCCESS); 1 ->
    KVM_EXIT_TDX, the VMM fills R11..R14; anything else INVALID_OPERAND."""
    leaf = g.r12
    if leaf == 0:
        g.r11 = g.r12 = g.r13 = g.r14 = 0
        g.r10 = arch.TDVMCALL_STATUS_SUCCESS
        return 1
    if leaf == 1:
        tdx = _kvm_exit_tdx(vcpu, arch.TDVMCALL_GET_TD_VM_CALL_INFO)
        tdx["leaf"] = 1
        tdx["ret"] = arch.TDVMCALL_STATUS_SUCCESS
        tdx["r11"] = tdx["r12"] = tdx["r13"] = tdx["r14"] = 0
        vcpu.pending_completion = tdx_complete_get_td_vm_call_info
        return 0
    g.r10 = arch.TDVMCALL_STATUS_INVALID_OPERAND
    return 1


def tdx_complete_get_td_vm_call_info(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """tdx_complete_get_td_vm_call_info: R10 = the VMM's ``tdx.get_tdvmcall_info.ret``,
    R11..R14 = its four outputs."""
    g = vcpu.gprs
    tdx = vcpu.run.tdx
    g.r10 = tdx["ret"]
    g.r11, g.r12, g.r13, g.r14 = tdx["r11"], tdx["r12"], tdx["r13"], tdx["r14"]
    return 1


def _kvm_exit_tdx(vcpu: VcpuTdx, nr: int) -> dict[str, Any]:
    run = vcpu.run
    run.exit_reason = arch.KVM_EXIT_TDX
    tdx = run.tdx
    tdx.clear()
    tdx["flags"] = 0
    tdx["nr"] = nr
    return tdx


def tdx_complete_simple(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """tdx_complete_simple: R10 = the status the VMM wrote."""
    vcpu.gprs.r10 = vcpu.run.tdx["ret"]
    return 1


def tdx_get_quote(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """tdx_get_quote: the buffer GPA R12 must be shared (else INVALID_OPERAND); KVM_EXIT_TDX
    with the stripped GPA and size R13; default status SUBFUNC_UNSUPPORTED unless the VMM
    sets one."""
    gpa, size = g.r12, g.r13
    if is_private_gpa(gpa):
        g.r10 = arch.TDVMCALL_STATUS_INVALID_OPERAND
        return 1
    tdx = _kvm_exit_tdx(vcpu, arch.TDVMCALL_GET_QUOTE)
    tdx["ret"] = arch.TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED
    tdx["gpa"] = gpa & ~SHARED_BIT
    tdx["size"] = size
    vcpu.pending_completion = tdx_complete_simple
    return 0


def tdx_setup_event_notify_interrupt(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """tdx_setup_event_notify_interrupt (v6.16 and today): vector R12 must be 32..255 (else
    INVALID_OPERAND); KVM_EXIT_TDX, default status SUBFUNC_UNSUPPORTED."""
    vector = g.r12
    if vector < 32 or vector > 255:
        g.r10 = arch.TDVMCALL_STATUS_INVALID_OPERAND
        return 1
    tdx = _kvm_exit_tdx(vcpu, arch.TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT)
    tdx["ret"] = arch.TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED
    tdx["vector"] = vector
    vcpu.pending_completion = tdx_complete_simple
    return 0


# --- the declaration -------------------------------------------------------------------------
LEAVES: tuple[Leaf, ...] = (
    Leaf(arch.TDVMCALL_CPUID, "Instruction.CPUID", "cpuid",
         doc="converted to EXIT_REASON_CPUID: tdx_emulate_cpuid"),
    Leaf(arch.TDVMCALL_HLT, "Instruction.HLT", "hlt",
         doc="converted to EXIT_REASON_HLT: kvm_emulate_halt_noskip"),
    Leaf(arch.TDVMCALL_IO, "Instruction.IO", "io",
         doc="converted to EXIT_REASON_IO_INSTRUCTION: tdx_emulate_io"),
    Leaf(arch.TDVMCALL_RDMSR, "Instruction.RDMSR", "rdmsr",
         doc="converted to EXIT_REASON_MSR_READ: kvm_emulate_rdmsr"),
    Leaf(arch.TDVMCALL_WRMSR, "Instruction.WRMSR", "wrmsr",
         doc="converted to EXIT_REASON_MSR_WRITE: kvm_emulate_wrmsr"),
    Leaf(arch.TDVMCALL_VE_REQUEST_MMIO, "#VE.RequestMMIO", "mmio",
         doc="converted to EXIT_REASON_EPT_MISCONFIG: tdx_emulate_mmio"),
    Leaf(54, "Instruction.WBINVD", "wbinvd", doc="not handled: SUBFUNC_UNSUPPORTED"),
    Leaf(arch.TDVMCALL_GET_TD_VM_CALL_INFO, "GetTdVmCallInfo", "get_td_vm_call_info",
         tdx_get_td_vm_call_info, doc="tdx_get_td_vm_call_info"),
    Leaf(arch.TDVMCALL_MAP_GPA, "MapGPA", "map_gpa", tdx_map_gpa, doc="tdx_map_gpa"),
    Leaf(arch.TDVMCALL_GET_QUOTE, "GetQuote", "get_quote", tdx_get_quote,
         doc="tdx_get_quote"),
    Leaf(arch.TDVMCALL_REPORT_FATAL_ERROR, "ReportFatalError", "report_fatal_error",
         tdx_report_fatal_error, doc="tdx_report_fatal_error"),
    Leaf(arch.TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT, "SetupEventNotifyInterrupt",
         "setup_event_notify_interrupt", tdx_setup_event_notify_interrupt,
         abi=tuple(n for n, gen in GENERATIONS.items() if gen.setup_event_notify),
         doc="tdx_setup_event_notify_interrupt (not in v6.16-rc1)"),
    Leaf(0x10005, "Service", "service", doc="not handled: SUBFUNC_UNSUPPORTED"),
)

BY_NUMBER: dict[int, Leaf] = {leaf.number: leaf for leaf in LEAVES}
BY_ALIAS: dict[str, Leaf] = {leaf.alias: leaf for leaf in LEAVES}
_HANDLED: dict[int, Leaf] = {leaf.number: leaf for leaf in LEAVES if leaf.handler is not None}
