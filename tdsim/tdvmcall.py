"""KVM's TDVMCALL handling (arch/x86/kvm/vmx/tdx.c, with the x86.c helpers it calls).

A TDVMCALL exits with EXIT_REASON_TDCALL; ``tdx_to_vmx_exit_reason`` turns the instruction
leaves into the exit reason a VMX guest would have made (CPUID, HLT, IO, MSR, MMIO as
EPT_MISCONFIG; R10 != 0 a KVM hypercall as VMCALL), and ``tdx_handle_exit`` sends each to its
handler: ``tdx_emulate_cpuid``, ``kvm_emulate_halt_noskip``, ``tdx_emulate_io``,
``kvm_emulate_rdmsr/wrmsr``, ``tdx_emulate_mmio``, ``tdx_emulate_vmcall``, or
``handle_tdvmcall`` for the GHCI leaves that stay EXIT_REASON_TDCALL.  Each handler follows the
kernel's order of checks and status codes (docs/tdvmcall.md; ``[kvm] tdvmcall_abi`` selects
the generation) and returns 1 (resume the guest: the call is complete) or 0 (exit to
userspace with ``vcpu.run`` filled and, where KVM sets one, a completion callback in
``vcpu.pending_completion``, run by `complete_userspace_io` at the next KVM_RUN; it may return
0 again, as MapGPA does for its next 2 MiB chunk).

The GHCI sub-functions are declared once, in `LEAVES`: number, GHCI name, the alias a scripted
guest may use, and how KVM handles it.  The scripted-guest compiler, the call records, the
dispatch of ``handle_tdvmcall`` and docs/tdvmcall.md's table derive from it.

Registers.  The handlers read and write ``vcpu.gprs``.  With ``[kvm] regs_layout =
"in_place"`` that is ``vp_enter_args`` itself, laid out like KVM's ``regs[]``, so nothing is
copied on exit or entry; with ``"copy"`` the 13 registers are copied to ``regs[]`` after every
exit and back before every entry.  In both layouts the generic emulation paths still move
values between registers (RCX <- R12 for an MSR access; RAX, RBX, RCX, RDX, RSI <- R10..R14
for a hypercall; the result to R10/R11).  Every move is counted (``regs.copies``,
``regs.bytes``, 8 bytes each) and costs ``costs.regs_copy_ns``.

Simplifications: KVM's MSR emulation for TDs is the table `TDX_EMULATED_MSRS` (a subset of
what ``tdx_has_emulated_msr`` accepts; writes to a read-only entry fail); the TD's CPUID does
not advertise PV_UNHALT / PV_SEND_IPI, so KVM_HC_KICK_CPU and KVM_HC_SEND_IPI return
-KVM_ENOSYS; KVM_HC_SCHED_YIELD returns 0 without a directed yield; KVM_HC_CLOCK_PAIRING
returns -KVM_EOPNOTSUPP (host clocksource not modelled).  In-kernel devices are ioeventfds
(``[[vmm.device]] ioeventfd = true``): they claim writes only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import arch, lapic
from .arch import KVM_REQ_NMI
from .guest import SHARED_BIT
from .kvm_x86 import KVM_MP_STATE_HALTED

if TYPE_CHECKING:
    from .host import HostCpu
    from .kvm_tdx import VcpuTdx

U64 = (1 << 64) - 1
PAGE_SIZE = 4096
GPAW = 48  # guest physical address width of the modelled TD (4-level EPT: shared bit 47)
TDX_MAP_GPA_MAX_LEN = 2 * 1024 * 1024

# include/uapi/linux/kvm_para.h
KVM_HC_VAPIC_POLL_IRQ = 1
KVM_HC_KICK_CPU = 5
KVM_HC_CLOCK_PAIRING = 9
KVM_HC_SEND_IPI = 10
KVM_HC_SCHED_YIELD = 11
KVM_HC_MAP_GPA_RANGE = arch.KVM_HC_MAP_GPA_RANGE
KVM_ENOSYS = 1000
KVM_EINVAL = 22
KVM_EOPNOTSUPP = 95
EAGAIN = 11
EINVAL = 22
KVM_MAP_GPA_RANGE_ENCRYPTED = 1 << 4
KVM_MAP_GPA_RANGE_DECRYPTED = 0
KVM_EXIT_HYPERCALL_LONG_MODE = 1 << 0
KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT = 0, 1
# struct kvm_run msr.reason (KVM_CAP_X86_USER_SPACE_MSR)
KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2
MSR_EXIT_REASON_BITS = {"inval": KVM_MSR_EXIT_REASON_INVAL,
                        "unknown": KVM_MSR_EXIT_REASON_UNKNOWN,
                        "filter": KVM_MSR_EXIT_REASON_FILTER}
KVM_MSR_RET_FILTERED = 3  # arch/x86/kvm/x86.h

# MSRs KVM emulates for a TD (tdx_has_emulated_msr), initial value and guest-writable.
X2APIC_ICR = 0x830
IA32_APICBASE = 0x1B
TDX_EMULATED_MSRS = {
    IA32_APICBASE: (0xFEE00D00, False),  # x2APIC enabled, BSP (vCPU 0)
    0x8B: (0x100000000, True),       # IA32_UCODE_REV (guest writes are ignored by KVM)
    0x10A: (0, False),               # IA32_ARCH_CAPABILITIES
    0xCE: (0, False),                # MSR_PLATFORM_INFO
    0x179: (0, False),               # IA32_MCG_CAP
    0x17A: (0, True),                # IA32_MCG_STATUS
    0x1A0: (0x1800, True),           # IA32_MISC_ENABLE: PEBS/BTS unavailable
    0x6E0: (0, True),                # IA32_TSC_DEADLINE
    X2APIC_ICR: (0, True),           # x2APIC ICR: a guest IPI (tdsim.lapic)
}

# The exit reasons tdx_to_vmx_exit_reason gives a TDVMCALL; tdx_handle_exit sends these here.
EXIT_REASONS = frozenset({
    arch.EXIT_REASON_CPUID, arch.EXIT_REASON_HLT, arch.EXIT_REASON_IO_INSTRUCTION,
    arch.EXIT_REASON_MSR_READ, arch.EXIT_REASON_MSR_WRITE, arch.EXIT_REASON_EPT_MISCONFIG,
    arch.EXIT_REASON_VMCALL, arch.EXIT_REASON_TDCALL,
})

Handler = Callable[["VcpuTdx", "HostCpu", Any], int]
Completion = Callable[["VcpuTdx", "HostCpu"], int]


@dataclass(frozen=True)
class Leaf:
    """One GHCI TDVMCALL sub-function (R11 with R10 = 0)."""

    number: int
    name: str                     # GHCI spelling (call records)
    alias: str                    # scripted guests' r11 name, and the tdvmcall.<kind> metric
    handler: Handler | None = None  # handle_tdvmcall's handler; None: not a handle_tdvmcall leaf
    abi: tuple[str, ...] = ("current", "v6.16")  # generations whose KVM handles it
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
    """kvm_arch_vcpu_ioctl_run's call of vcpu->arch.complete_userspace_io: 1 = go on into
    the guest (the call completes), 0 = back to userspace (MapGPA's next chunk)."""
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
    else:
        cpu.acc += vcpu.costs.tdvmcall_userspace_ns
        vcpu.run_exit_reason = vcpu.run.exit_reason
    return r


def init_vcpu(vcpu: VcpuTdx) -> None:
    """KVM's emulated MSR values of a new vCPU (vCPU 0 is the BSP), the call log of a
    scripted guest, and the handler of each converted reason with its handling cost (None:
    by whether it answered in the kernel)."""
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
    vcpu.msr_values = {i: v for i, (v, _w) in TDX_EMULATED_MSRS.items()}
    if vcpu.vcpu_id != 0:
        vcpu.msr_values[IA32_APICBASE] &= ~0x100
    vcpu.call_log = vcpu.guest if hasattr(vcpu.guest, "record_exit") else None


# --- helpers -------------------------------------------------------------------------------
def is_private_gpa(gpa: int) -> bool:
    """vt_is_tdx_private_gpa: the shared bit is clear."""
    return not gpa & SHARED_BIT


def is_legal_gpa(gpa: int) -> bool:
    """kvm_vcpu_is_legal_gpa: below the guest's MAXPHYADDR (= GPAW for a TD)."""
    return 0 <= gpa < 1 << GPAW


def _mask(size: int) -> int:
    return (1 << (8 * size)) - 1


def _neg(errno: int) -> int:
    return -errno & U64


# --- CPUID, HLT, IO, MMIO ------------------------------------------------------------------
_NO_CPUID = (0, 0, 0, 0)


def tdx_emulate_cpuid(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """tdx_emulate_cpuid: leaf R12, sub-leaf R13 -> kvm_cpuid -> R12..R15 = EAX..EDX.
    kvm_cpuid is a lookup in the VMM's table; a leaf it lacks reads as zeros."""
    table = vcpu.vm.cpuid_entries
    eax, ebx, ecx, edx = table.get((g.r12 & 0xFFFFFFFF, g.r13 & 0xFFFFFFFF),
                                   _NO_CPUID) if table else _NO_CPUID
    g.r12, g.r13, g.r14, g.r15 = eax, ebx, ecx, edx
    return 1


def kvm_emulate_halt_noskip(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """kvm_emulate_halt_noskip: the vCPU halts (vcpu_run then blocks it until it has an
    event)."""
    vcpu.mp_state = KVM_MP_STATE_HALTED
    return 1


def tdx_emulate_io(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """tdx_emulate_io: size R12 (1/2/4), direction R13 (0 in, 1 out), port R14, data R15.
    An in-kernel device (ioeventfd) may claim an OUT; else KVM_EXIT_IO with a completion."""
    vcpu.stat["io_exits"] += 1
    size, write, port = g.r12, g.r13, g.r14 & 0xFFFF
    if write not in (0, 1) or size not in (1, 2, 4):
        g.r10 = arch.TDVMCALL_STATUS_INVALID_OPERAND
        return 1
    val = g.r15 & _mask(size) if write else 0
    if write and vcpu.vm.io_devices and vcpu.vm.kvm_io_bus_write("pio", port, vcpu.env.now):
        return 1
    run = vcpu.run
    run.exit_reason = arch.KVM_EXIT_IO
    io = run.io
    io["direction"] = KVM_EXIT_IO_OUT if write else KVM_EXIT_IO_IN
    io["size"] = size
    io["port"] = port
    io["count"] = 1
    io["data"] = val
    vcpu.pending_completion = tdx_complete_pio_out if write else tdx_complete_pio_in
    return 0


def tdx_complete_pio_out(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    return 1


def tdx_complete_pio_in(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """R11 = the data userspace put in the kvm_run IO page."""
    io = vcpu.run.io
    vcpu.gprs.r11 = io["data"] & _mask(io["size"])
    return 1


def tdx_emulate_mmio(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """tdx_emulate_mmio: size R12 (1/2/4/8), direction R13, GPA R14, data R15.  The first
    and last byte must be shared GPAs; the shared bit is stripped.  (The merged code has no
    separate page-crossing check: a crossing access is refused only when it leaves the
    shared range.)"""
    size, write, gpa = g.r12, g.r13, g.r14
    val = g.r15 if write else 0
    if size not in (1, 2, 4, 8) or write not in (0, 1):
        g.r10 = arch.TDVMCALL_STATUS_INVALID_OPERAND
        return 1
    if is_private_gpa(gpa) or is_private_gpa((gpa + size - 1) & U64):
        g.r10 = arch.TDVMCALL_STATUS_INVALID_OPERAND
        return 1
    gpa &= ~SHARED_BIT
    if write and vcpu.vm.io_devices and vcpu.vm.kvm_io_bus_write("mmio", gpa, vcpu.env.now):
        return 1  # fast MMIO / MMIO bus: kernel completed device emulation
    run = vcpu.run
    run.exit_reason = arch.KVM_EXIT_MMIO
    mmio = run.mmio
    mmio["phys_addr"] = gpa
    mmio["len"] = size
    mmio["is_write"] = write
    mmio["data"] = val & _mask(size)
    if not write:
        vcpu.pending_completion = tdx_complete_mmio_read
    return 0


def tdx_complete_mmio_read(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    mmio = vcpu.run.mmio
    vcpu.gprs.r11 = mmio["data"] & _mask(mmio["len"])
    return 1


# --- MSRs ----------------------------------------------------------------------------------
def _msr_allowed(vcpu: VcpuTdx, index: int, write: bool) -> bool:
    """kvm_msr_allowed: the VMM's filter (default allow); x2APIC MSRs are never filtered."""
    vm = vcpu.vm
    deny = vm.msr_filter_deny_write if write else vm.msr_filter_deny_read
    return not deny or index not in deny or 0x800 <= index <= 0x8FF


def _msr_reason(r: int) -> int:
    """kvm_msr_reason: FILTERED -> FILTER; a TDX emulation failure (1) -> INVAL."""
    return KVM_MSR_EXIT_REASON_FILTER if r == KVM_MSR_RET_FILTERED else \
        KVM_MSR_EXIT_REASON_INVAL


def kvm_msr_user_space(vcpu: VcpuTdx, index: int, exit_reason: int, data: int,
                       completion: Completion, r: int) -> bool:
    """kvm_msr_user_space: exit to the VMM if it asked for this failure reason."""
    reason = _msr_reason(r)
    if not vcpu.vm.user_space_msr_mask & reason:
        return False
    run = vcpu.run
    run.exit_reason = exit_reason
    msr = run.msr
    msr["error"] = 0
    msr["reason"] = reason
    msr["index"] = index
    msr["data"] = data
    vcpu.pending_completion = completion
    return True


def kvm_emulate_rdmsr(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """EXIT_REASON_MSR_READ: kvm_rcx_write(R12); kvm_emulate_rdmsr ->
    kvm_get_msr_with_filter (filter, then tdx_get_msr) -> userspace or
    tdx_complete_emulated_msr."""
    g.rcx = g.r12
    vcpu.regs_moves += 1
    index = g.rcx & 0xFFFFFFFF
    if vcpu.vm.msr_filter_deny_read and not _msr_allowed(vcpu, index, False):
        r = KVM_MSR_RET_FILTERED
    elif index in vcpu.msr_values:
        r = 0
        data = vcpu.msr_values[index]
        g.rax, g.rdx = data & 0xFFFFFFFF, data >> 32
    else:
        r = 1
    if r and kvm_msr_user_space(vcpu, index, arch.KVM_EXIT_X86_RDMSR, 0,
                                complete_fast_rdmsr, r):
        return 0
    return tdx_complete_emulated_msr(vcpu, cpu, r, True)


def kvm_emulate_wrmsr(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """EXIT_REASON_MSR_WRITE: RCX <- R12, EAX:EDX <- R13; kvm_emulate_wrmsr."""
    g.rcx, g.rax, g.rdx = g.r12, g.r13 & 0xFFFFFFFF, g.r13 >> 32
    vcpu.regs_moves += 3
    index = g.rcx & 0xFFFFFFFF
    data = (g.rdx << 32) | g.rax
    vm = vcpu.tdx_vm
    if vm.msr_filter_deny_write and not _msr_allowed(vcpu, index, True):
        r = KVM_MSR_RET_FILTERED
    elif index in vcpu.msr_values and TDX_EMULATED_MSRS[index][1]:
        r = 0
        vcpu.msr_values[index] = data
        if index == X2APIC_ICR:  # an x2APIC ICR write is a guest IPI
            if vcpu.call_log is not None:  # a scripted guest: the ICR says where
                lapic.kvm_x2apic_icr_write(vcpu, cpu, data, vcpu.irq,
                                           vcpu.costs.icr_write_ns)
            else:  # a statistical guest: the destinations its pattern names
                lapic.kvm_apic_send_ipi_pattern(vcpu, cpu, data, vm.tdx_interrupts,
                                                vm.ipi_rng, vcpu.irq, vcpu.costs.icr_write_ns)
        elif vcpu.guest.kind == "tsc_deadline":  # the one-shot timer is re-armed
            vcpu.lapic_timer.kvm_set_lapic_tscdeadline_msr()
    else:
        r = 1
    if r and kvm_msr_user_space(vcpu, index, arch.KVM_EXIT_X86_WRMSR, data,
                                complete_fast_msr_access, r):
        return 0
    return tdx_complete_emulated_msr(vcpu, cpu, r, False)


def complete_fast_rdmsr(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    msr = vcpu.run.msr
    if not msr["error"]:
        g = vcpu.gprs
        g.rax, g.rdx = msr["data"] & 0xFFFFFFFF, msr["data"] >> 32
    return tdx_complete_emulated_msr(vcpu, cpu, msr["error"], True)


def complete_fast_msr_access(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    return tdx_complete_emulated_msr(vcpu, cpu, vcpu.run.msr["error"], False)


def tdx_complete_emulated_msr(vcpu: VcpuTdx, cpu: HostCpu, err: int, read: bool) -> int:
    """tdx_complete_emulated_msr: an error -> INVALID_OPERAND; a read -> R11 = EDX:EAX."""
    g = vcpu.gprs
    if err:
        g.r10 = arch.TDVMCALL_STATUS_INVALID_OPERAND
        return 1
    if read:
        g.r11 = (g.rdx << 32) | g.rax
        vcpu.regs_moves += 1
    return 1


# --- KVM hypercalls (R10 != 0) -------------------------------------------------------------
def tdx_emulate_vmcall(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """tdx_emulate_vmcall: RAX, RBX, RCX, RDX, RSI <- R10..R14, then
    __kvm_emulate_hypercall with complete_hypercall_exit (result -> R10)."""
    g.rax, g.rbx, g.rcx, g.rdx, g.rsi = g.r10, g.r11, g.r12, g.r13, g.r14
    vcpu.regs_moves += 5
    r = kvm_emulate_hypercall(vcpu, g, complete_hypercall_exit)
    if r > 0:
        r = complete_hypercall_exit(vcpu, cpu)
    return r


def kvm_emulate_hypercall(vcpu: VcpuTdx, g: Any, complete: Completion) -> int:
    """____kvm_emulate_hypercall (cpl 0, 64-bit): nr = RAX, a0..a3 = RBX, RCX, RDX, RSI."""
    vcpu.stat["hypercalls"] += 1
    nr, a0, a1, a2 = g.rax, g.rbx, g.rcx, g.rdx
    run = vcpu.run
    hc = run.hypercall
    if nr in (KVM_HC_VAPIC_POLL_IRQ, KVM_HC_SCHED_YIELD):
        ret = 0
    elif nr == KVM_HC_CLOCK_PAIRING:
        ret = _neg(KVM_EOPNOTSUPP)
    elif nr == KVM_HC_MAP_GPA_RANGE:
        ret = _neg(KVM_ENOSYS)
        if vcpu.vm.hypercall_exit_enabled:
            gfn = a0 >> 12
            if a0 & (PAGE_SIZE - 1) or not a1 or (gfn + a1) & U64 <= gfn:
                ret = _neg(KVM_EINVAL)
            else:
                run.exit_reason = arch.KVM_EXIT_HYPERCALL
                hc["nr"] = KVM_HC_MAP_GPA_RANGE
                hc["args"] = [a0, a1, a2, 0, 0, 0]
                hc["flags"] = KVM_EXIT_HYPERCALL_LONG_MODE
                hc["ret"] = 0
                vcpu.pending_completion = complete
                return 0
    else:  # includes KICK_CPU / SEND_IPI: PV features not advertised to the TD
        ret = _neg(KVM_ENOSYS)
    hc["ret"] = ret
    return 1


def complete_hypercall_exit(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """complete_hypercall_exit (tdx.c): R10 = run->hypercall.ret."""
    vcpu.gprs.r10 = vcpu.run.hypercall["ret"] & U64
    vcpu.regs_moves += 1
    return 1


# --- the GHCI leaves that stay EXIT_REASON_TDCALL ------------------------------------------
def tdx_map_gpa(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """tdx_map_gpa: GPA R12, size R13.  Checks in KVM's order: KVM_CAP_EXIT_HYPERCALL
    (SUBFUNC_UNSUPPORTED); overflow, illegal GPA, shared-bit mismatch (INVALID_OPERAND);
    4 KiB alignment (ALIGN_ERROR).  On error R11 = the GPA."""
    gpa, size = g.r12, g.r13
    if not vcpu.vm.hypercall_exit_enabled:
        ret = arch.TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED
    elif ((gpa + size) & U64 <= gpa or not is_legal_gpa(gpa)
          or not is_legal_gpa((gpa + size - 1) & U64)
          or is_private_gpa(gpa) != is_private_gpa((gpa + size - 1) & U64)):
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
    """__tdx_map_gpa: KVM_EXIT_HYPERCALL(KVM_HC_MAP_GPA_RANGE) for the next <= 2 MiB."""
    gpa = vcpu.map_gpa_next
    size = min(vcpu.map_gpa_end - gpa, TDX_MAP_GPA_MAX_LEN)
    run = vcpu.run
    run.exit_reason = arch.KVM_EXIT_HYPERCALL
    hc = run.hypercall
    hc["nr"] = KVM_HC_MAP_GPA_RANGE
    hc["ret"] = 0
    hc["args"] = [gpa & ~SHARED_BIT, size // PAGE_SIZE,
                  KVM_MAP_GPA_RANGE_ENCRYPTED if is_private_gpa(gpa)
                  else KVM_MAP_GPA_RANGE_DECRYPTED, 0, 0, 0]
    hc["flags"] = KVM_EXIT_HYPERCALL_LONG_MODE
    vcpu.pending_completion = tdx_complete_vmcall_map_gpa


def tdx_complete_vmcall_map_gpa(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """tdx_complete_vmcall_map_gpa: a VMM error ends the call (current design: -EAGAIN ->
    RETRY, else INVALID_OPERAND; v6.16: any error -> INVALID_OPERAND) with R11 = the GPA not
    yet mapped; else the next chunk, unless an interrupt or NMI is pending
    (kvm_vcpu_has_events without the RVI check: the PI descriptor, KVM_REQ_NMI /
    nmi_pending) -> RETRY with R11 = the next GPA."""
    g = vcpu.gprs
    ret = vcpu.run.hypercall["ret"] & U64
    if ret:
        if ret == _neg(EAGAIN) and vcpu.config.tdvmcall_abi == "current":
            g.r10 = arch.TDVMCALL_STATUS_RETRY
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
    """tdx_setup_event_notify_interrupt (current design): vector R12 must be 32..255 (else
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
         "setup_event_notify_interrupt", tdx_setup_event_notify_interrupt, abi=("current",),
         doc="tdx_setup_event_notify_interrupt (current generation only)"),
    Leaf(0x10005, "Service", "service", doc="not handled: SUBFUNC_UNSUPPORTED"),
)

BY_NUMBER: dict[int, Leaf] = {leaf.number: leaf for leaf in LEAVES}
BY_ALIAS: dict[str, Leaf] = {leaf.alias: leaf for leaf in LEAVES}
_HANDLED: dict[int, Leaf] = {leaf.number: leaf for leaf in LEAVES if leaf.handler is not None}
