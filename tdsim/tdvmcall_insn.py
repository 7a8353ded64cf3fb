"""The TDVMCALLs that stand for an instruction the guest could not execute (arch/x86/kvm/vmx/
tdx.c): CPUID, HLT, IO and #VE.RequestMMIO, which tdx_to_vmx_exit_reason turns into
EXIT_REASON_CPUID, HLT, IO_INSTRUCTION and EPT_MISCONFIG (the MSR accesses are
`tdsim.tdvmcall_msr`, the dispatch `tdsim.tdvmcall`).  Each handler returns 1 (the call is
complete) or 0 (exit to userspace with ``vcpu.run`` filled and a completion where KVM sets
one)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import arch
from .guest import SHARED_BIT
from .kvm_x86 import KVM_MP_STATE_HALTED

if TYPE_CHECKING:
    from .host import HostCpu
    from .kvm_tdx import VcpuTdx

U64 = (1 << 64) - 1
KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT = 0, 1


# --- helpers -------------------------------------------------------------------------------
def is_private_gpa(gpa: int) -> bool:
    """vt_is_tdx_private_gpa: the shared bit is clear."""
    return not gpa & SHARED_BIT


def _mask(size: int) -> int:
    return (1 << (8 * size)) - 1


def _int(reg: int) -> int:
    """A register assigned to a C ``int``: its low 32 bits, signed."""
    low = reg & 0xFFFFFFFF
    return low - (1 << 32) if low >> 31 else low


# --- CPUID, HLT, IO, MMIO ------------------------------------------------------------------
def tdx_emulate_cpuid(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """tdx_emulate_cpuid: leaf (u32)R12, sub-leaf (u32)R13 -> kvm_cpuid(exact_only = false)
    (`tdsim.kvm_cpuid`: an out-of-range leaf reads the maximum basic leaf) -> R12..R15 =
    EAX..EDX.  R10 and R11 are not written."""
    g.r12, g.r13, g.r14, g.r15 = vcpu.vm.cpuid.kvm_cpuid(g.r12 & 0xFFFFFFFF,
                                                         g.r13 & 0xFFFFFFFF)
    return 1


def kvm_emulate_halt_noskip(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """kvm_emulate_halt_noskip: the vCPU halts (vcpu_run then blocks it until it is runnable:
    an event, or a PV unhalt).  No register is written."""
    vcpu.mp_state = KVM_MP_STATE_HALTED
    return 1


def _in_kernel_device(vcpu: VcpuTdx, g: Any, space: str, addr: int, size: int,
                      write: int) -> bool:
    """The PIO or MMIO bus step of tdx_emulate_io / tdx_emulate_mmio: an in-kernel device
    takes a write (ioeventfd) or answers a read (R11 = the value, masked to `size`); False
    = exit to userspace."""
    vm = vcpu.vm
    if write:
        return vm.kvm_io_bus_write(space, addr, vcpu.env.now)
    data = vm.kvm_io_bus_read(space, addr, size)
    if data is None:
        return False
    g.r11 = data & _mask(size)
    return True


def tdx_emulate_io(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """tdx_emulate_io: size R12 (1/2/4), direction R13 (0 in, 1 out), port R14 (16 bits:
    the emulator's port), data R15.  ``io_exits`` counts before the checks; a bad size or
    direction is INVALID_OPERAND.  An in-kernel device on the PIO bus takes an OUT
    (ioeventfd) or answers an IN (R11 = the value); else KVM_EXIT_IO (an IN's data page is
    zeroed) with a completion."""
    vcpu.stat["io_exits"] += 1
    size, write, port = g.r12, g.r13, g.r14 & 0xFFFF
    if write not in (0, 1) or size not in (1, 2, 4):
        g.r10 = arch.TDVMCALL_STATUS_INVALID_OPERAND
        return 1
    val = g.r15 & _mask(size) if write else 0
    vm = vcpu.vm
    if vm.io_devices and _in_kernel_device(vcpu, g, "pio", port, size, write):
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
    """tdx_complete_pio_out: nothing to write back."""
    return 1


def tdx_complete_pio_in(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """tdx_complete_pio_in: R11 = the `size` bytes userspace put in the kvm_run IO page."""
    io = vcpu.run.io
    vcpu.gprs.r11 = io["data"] & _mask(io["size"])
    return 1


def tdx_emulate_mmio(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """tdx_emulate_mmio: size R12 (1/2/4/8), direction R13, GPA R14, data R15.  Size and
    direction are C ``int``s: only the low 32 bits, read as signed, are checked.  The first
    and last byte must be shared GPAs; the shared bit is stripped.  (The merged code has no
    page-crossing check: a crossing access is refused only when it leaves the shared
    range.)  On the MMIO bus an in-kernel device takes a write or answers a read (R11);
    otherwise KVM_EXIT_MMIO.  KVM does not write ``mmio.data`` for a read exit, and a write
    exit has no completion (R10, R11 come back as the guest passed them)."""
    size, write, gpa = _int(g.r12), _int(g.r13), g.r14
    if size not in (1, 2, 4, 8) or write not in (0, 1):
        g.r10 = arch.TDVMCALL_STATUS_INVALID_OPERAND
        return 1
    if is_private_gpa(gpa) or is_private_gpa((gpa + size - 1) & U64):
        g.r10 = arch.TDVMCALL_STATUS_INVALID_OPERAND
        return 1
    gpa &= ~SHARED_BIT
    vm = vcpu.vm
    if vm.io_devices and _in_kernel_device(vcpu, g, "mmio", gpa, size, write):
        return 1  # fast MMIO / MMIO bus: the kernel completed device emulation
    run = vcpu.run
    run.exit_reason = arch.KVM_EXIT_MMIO
    mmio = run.mmio
    mmio["phys_addr"] = gpa
    mmio["len"] = size
    mmio["is_write"] = write
    if write:
        mmio["data"] = g.r15 & _mask(size)
    else:
        vcpu.pending_completion = tdx_complete_mmio_read
    return 0


def tdx_complete_mmio_read(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """tdx_complete_mmio_read: R11 = `len` bytes of ``mmio.data`` (R10 untouched)."""
    mmio = vcpu.run.mmio
    vcpu.gprs.r11 = mmio.get("data", 0) & _mask(mmio["len"])
    return 1
