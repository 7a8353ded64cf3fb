"""KVM hypercalls from a TD: a TDVMCALL with R10 != 0 (EXIT_REASON_VMCALL after
tdx_to_vmx_exit_reason), handled by ``tdx_emulate_vmcall`` -> ``____kvm_emulate_hypercall``
(arch/x86/kvm/vmx/tdx.c, arch/x86/kvm/x86.c) -> the TDX ``complete_hypercall_exit`` (R10 =
``run->hypercall.ret``).

The PV features a hypercall needs are checked with ``guest_pv_has``: true for every feature
unless the VMM enabled KVM_CAP_ENFORCE_PV_FEATURE_CPUID, then the bit of the KVM CPUID leaf
(`tdsim.kvm_cpuid`).  KVM_HC_KICK_CPU needs PV_UNHALT, KVM_HC_SEND_IPI PV_SEND_IPI,
KVM_HC_SCHED_YIELD PV_SCHED_YIELD; a missing one gives -KVM_ENOSYS.

Simplifications: a TD is a 64-bit guest (``is_64_bit_hypercall``: a debug TD's 32-bit
truncation is not modelled); ``kvm_sched_yield`` (the directed yield of KICK_CPU and
SCHED_YIELD) does nothing; KVM_HC_CLOCK_PAIRING returns -KVM_EOPNOTSUPP as on a host whose
clocksource is not the TSC (with a TSC clocksource KVM writes the pairing to guest memory and
returns 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import arch, lapic
from .kvm_cpuid import (
    KVM_FEATURE_PV_SCHED_YIELD,
    KVM_FEATURE_PV_SEND_IPI,
    KVM_FEATURE_PV_UNHALT,
    guest_pv_has,
)

if TYPE_CHECKING:
    from .host import HostCpu
    from .kvm_tdx import VcpuTdx

Completion = Callable[["VcpuTdx", "HostCpu"], int]
U64 = (1 << 64) - 1
PAGE_SIZE = 4096

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
KVM_EXIT_HYPERCALL_LONG_MODE = 1 << 0


def neg(errno: int) -> int:
    """-errno as the 64-bit register value the guest sees."""
    return -errno & U64


def tdx_emulate_vmcall(vcpu: VcpuTdx, cpu: HostCpu, g: Any) -> int:
    """tdx_emulate_vmcall: RAX, RBX, RCX, RDX, RSI <- R10..R14, then
    __kvm_emulate_hypercall with complete_hypercall_exit (result -> R10)."""
    g.rax, g.rbx, g.rcx, g.rdx, g.rsi = g.r10, g.r11, g.r12, g.r13, g.r14
    vcpu.regs_moves += 5
    r = kvm_emulate_hypercall(vcpu, cpu, g, complete_hypercall_exit)
    if r > 0:
        r = complete_hypercall_exit(vcpu, cpu)
    return r


def kvm_emulate_hypercall(vcpu: VcpuTdx, cpu: HostCpu, g: Any, complete: Completion) -> int:
    """____kvm_emulate_hypercall (cpl 0, 64-bit): nr = RAX, a0..a3 = RBX, RCX, RDX, RSI.
    Writes ``run->hypercall.ret`` even for a call handled in the kernel, as KVM does."""
    vcpu.stat["hypercalls"] += 1
    nr, a0, a1, a2, a3 = g.rax, g.rbx, g.rcx, g.rdx, g.rsi
    run = vcpu.run
    hc = run.hypercall
    ret = neg(KVM_ENOSYS)
    if nr == KVM_HC_VAPIC_POLL_IRQ:
        ret = 0
    elif nr == KVM_HC_KICK_CPU:
        if guest_pv_has(vcpu.vm, KVM_FEATURE_PV_UNHALT):
            kvm_pv_kick_cpu_op(vcpu, cpu, a1)
            ret = 0
    elif nr == KVM_HC_CLOCK_PAIRING:
        ret = neg(KVM_EOPNOTSUPP)
    elif nr == KVM_HC_SEND_IPI:
        if guest_pv_has(vcpu.vm, KVM_FEATURE_PV_SEND_IPI):
            ret = kvm_pv_send_ipi(vcpu, cpu, a0, a1, a2 & 0xFFFFFFFF, a3) & U64
    elif nr == KVM_HC_SCHED_YIELD:
        if guest_pv_has(vcpu.vm, KVM_FEATURE_PV_SCHED_YIELD):
            ret = 0
    elif nr == KVM_HC_MAP_GPA_RANGE and vcpu.vm.hypercall_exit_enabled:
        gfn = a0 >> 12
        if a0 & (PAGE_SIZE - 1) or not a1 or (gfn + a1) & U64 <= gfn:
            ret = neg(KVM_EINVAL)
        else:
            # KVM_EXIT_HYPERCALL with the shared bit not stripped; args[3..5] keep whatever
            # the last exit left there
            run.exit_reason = arch.KVM_EXIT_HYPERCALL
            hc["nr"] = KVM_HC_MAP_GPA_RANGE
            args = hc.setdefault("args", [0] * 6)
            args[0], args[1], args[2] = a0, a1, a2
            hc["flags"] = KVM_EXIT_HYPERCALL_LONG_MODE
            hc["ret"] = 0
            vcpu.pending_completion = complete
            return 0
    hc["ret"] = ret
    return 1


def complete_hypercall_exit(vcpu: VcpuTdx, cpu: HostCpu) -> int:
    """complete_hypercall_exit (tdx.c): R10 = run->hypercall.ret; R11 is left alone."""
    vcpu.gprs.r10 = vcpu.run.hypercall["ret"] & U64
    vcpu.regs_moves += 1
    return 1


def kvm_pv_kick_cpu_op(vcpu: VcpuTdx, cpu: HostCpu, apicid: int) -> None:
    """kvm_pv_kick_cpu_op: an APIC_DM_REMRD "interrupt" to physical APIC ID `apicid`, whose
    __apic_accept_irq sets pv_unhalted and kicks it (a halted vCPU wakes)."""
    lapic.kvm_apic_send_ipi(vcpu, cpu, lapic.APIC_DM_REMRD, apicid & 0xFFFFFFFF, vcpu.irq,
                            vcpu.costs.icr_write_ns)


def kvm_pv_send_ipi(vcpu: VcpuTdx, cpu: HostCpu, low: int, high: int, min_id: int,
                    icr: int) -> int:
    """kvm_pv_send_ipi (lapic.c): -KVM_EINVAL if the ICR asks for a logical destination or a
    shorthand; else the vector and delivery mode of `icr` go to APIC ID min_id + i for each
    bit i of `low`, and min_id + 64 + i for each bit of `high` (64-bit clusters), wherever a
    vCPU has that ID.  Returns how many accepted it."""
    if icr & lapic.APIC_DEST_LOGICAL or icr & lapic.APIC_SHORT_MASK:
        return -KVM_EINVAL
    by_id = {v.vcpu_id: v for v in vcpu.vm.vcpus}
    count = 0
    for base, bitmap in ((min_id, low), (min_id + 64, high)):
        for i in range(64):
            target = by_id.get(base + i) if bitmap >> i & 1 else None
            if target is not None:
                cpu.acc += vcpu.costs.icr_write_ns
                count += lapic.apic_accept_irq(target, icr & 0xFFFFFFFF, vcpu.irq)
    return count
