"""KVM's local APIC emulation as far as a TD uses it (arch/x86/kvm/lapic.c): the guest timer's
hrtimer, the TSC-deadline MSR, the x2APIC registers KVM emulates, and the IPIs an ICR write
sends.

A TD's APIC is protected: the CPU virtualizes most of it (TPR, EOI, ISR/IRR...) and KVM cannot
read it, but the guest's #VE handler turns an access to the others into a TDVMCALL
RDMSR/WRMSR that KVM emulates (``kvm_x2apic_msr_read/write``, for the registers
``tdx_has_emulated_msr`` lets through: `tdsim.tdvmcall_msr`), and KVM still runs the timer (an
hrtimer on the host whose expiry posts the timer vector).  Every vector reaches its vCPU as a
posted interrupt through `tdsim.irqstats.IrqStats.post` (kvm_x86_ops.deliver_interrupt plus
the stuck-halt oracle).

Register values and rules are those of lapic.c (kvm-x86/linux, 2025-2026: kvm_lapic_reset,
kvm_apic_set_version, kvm_lapic_readable_reg_mask, kvm_lapic_reg_write,
__kvm_x2apic_icr_write).  Not modelled: the APIC timer programmed through LVTT/TMICT or a
scripted guest's TSC deadline (the guest timers of `[vm.workload]` are their own model), and
the count-down of TMCCT.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from . import arch
from .host import HOST_IRQ, ProcessGenerator
from .irqstats import Shootdown

if TYPE_CHECKING:
    from .clock import Environment
    from .config import InterruptConfig
    from .host import HostCpu
    from .irqstats import IrqStats

_HOST_IRQ_TIMER = HOST_IRQ["timer"]


class LapicTimer:
    """apic->lapic_timer of one vCPU: a periodic or one-shot (TSC-deadline) hrtimer.

    With ``[kvm] lapic_timer_advance_ns`` the hrtimer fires that much before the deadline
    (KVM's timer advance); ``kvm_wait_lapic_expire`` at entry spins until the deadline."""

    def __init__(self, env: Environment, vcpu: Any, irq: IrqStats, advance_ns: int,
                 period_ns: int) -> None:
        self.env = env
        self.vcpu = vcpu
        self.irq = irq
        self.advance_ns = advance_ns
        self.period_ns = period_ns
        self.gen = 0  # hrtimer generation: a restart cancels the pending expiry

    def periodic(self, phase_ns: int) -> ProcessGenerator:
        """A periodic timer: its hrtimer re-arms itself every period."""
        env = self.env
        adv = self.advance_ns
        first = phase_ns if phase_ns >= adv else phase_ns + self.period_ns
        yield env.timeout(first - adv)
        while True:
            self.expire(env.now + adv)
            yield env.timeout(self.period_ns)

    def kvm_set_lapic_tscdeadline_msr(self) -> None:
        """The guest's re-arm WRMSR(IA32_TSC_DEADLINE): start the hrtimer one period out.
        (Only the one-shot re-arm call arms it; the mix's representative WRMSR of the same
        MSR carries a placeholder value.)"""
        vcpu = self.vcpu
        vcpu.stat["timer_armed"] += 1
        self.hrtimer_start(vcpu.oneshot_period)

    def hrtimer_start(self, delay_ns: int) -> None:
        """Start the one-shot hrtimer for the deadline `delay_ns` from now."""
        self.gen += 1
        gen = self.gen
        deadline = self.env.now + delay_ns
        ev = self.env.timeout(max(0, delay_ns - self.advance_ns))
        ev.callbacks.append(lambda _e: self.apic_timer_fn(gen, deadline))

    def apic_timer_fn(self, gen: int, deadline: int) -> None:
        """The one-shot hrtimer expires (unless restarted since)."""
        if gen == self.gen:
            self.expire(deadline)

    def expire(self, deadline: int) -> None:
        """apic_timer_expired on the vCPU's CPU: the hrtimer interrupt hits that CPU, then
        the timer vector is posted to the vCPU."""
        vcpu = self.vcpu
        vcpu.timer_deadline = deadline
        vcpu.stat["timer_fired"] += 1
        cpu = vcpu.cpu
        if cpu is not None:
            cpu.host_irq(_HOST_IRQ_TIMER)
        self.irq.post(vcpu, arch.LOCAL_TIMER_VECTOR, "timer")


# --- the x2APIC registers KVM emulates for a TD (tdx_has_emulated_msr lets them through) -----
# Register offsets (arch/x86/include/asm/apicdef.h); in x2APIC mode register R is MSR
# 0x800 + (R >> 4).  KVM keeps them in its APIC page; tdsim keeps them in the vCPU's
# emulated-MSR dict under that MSR index (the ICR as one 64-bit value).
APIC_BASE_MSR = 0x800
APIC_ID, APIC_LVR, APIC_TASKPRI, APIC_ARBPRI, APIC_PROCPRI = 0x20, 0x30, 0x80, 0x90, 0xA0
APIC_EOI, APIC_LDR, APIC_DFR, APIC_SPIV = 0xB0, 0xD0, 0xE0, 0xF0
APIC_ISR, APIC_TMR, APIC_IRR, APIC_ISR_NR = 0x100, 0x180, 0x200, 8
APIC_ESR, APIC_LVTCMCI, APIC_ICR, APIC_ICR2 = 0x280, 0x2F0, 0x300, 0x310
APIC_LVTT, APIC_LVTTHMR, APIC_LVTPC, APIC_LVT0, APIC_LVT1, APIC_LVTERR = (
    0x320, 0x330, 0x340, 0x350, 0x360, 0x370)
APIC_TMICT, APIC_TMCCT, APIC_TDCR, APIC_SELF_IPI = 0x380, 0x390, 0x3E0, 0x3F0
APIC_VERSION = 0x14
APIC_LVR_DIRECTED_EOI = 1 << 24
APIC_SPIV_APIC_ENABLED, APIC_SPIV_DIRECTED_EOI = 1 << 8, 1 << 12
APIC_LVT_MASKED = 1 << 16
APIC_LVT_TIMER_ONESHOT, APIC_LVT_TIMER_PERIODIC, APIC_LVT_TIMER_TSCDEADLINE = 0, 1 << 17, 2 << 17
APIC_ICR_BUSY = 1 << 12
APIC_DM_FIXED, APIC_DM_LOWEST, APIC_DM_REMRD, APIC_DM_NMI = 0x000, 0x100, 0x300, 0x400
APIC_MODE_MASK, APIC_DEST_LOGICAL = 0x700, 0x800
APIC_INT_ASSERT, APIC_INT_LEVELTRIG = 1 << 14, 1 << 15
APIC_SHORT_MASK, APIC_DEST_SELF, APIC_DEST_ALLINC, APIC_DEST_ALLBUT = (
    0xC0000, 0x40000, 0x80000, 0xC0000)
X2APIC_BROADCAST = 0xFFFFFFFF
# bits 31:20, 17:16 and 13 of an x2APIC ICR write are reserved (__kvm_x2apic_icr_write)
X2APIC_ICR_RESERVED_BITS = (0xFFF << 20) | (3 << 16) | (1 << 13)
# apic_lvt_mask[] (LVT_MASK = masked | send pending | vector; LINT adds mode, polarity,
# remote IRR, trigger); the timer's mode bits are added at run time (timer_mode_mask)
_LVT_MASK = APIC_LVT_MASKED | (1 << 12) | 0xFF
_LINT_MASK = _LVT_MASK | APIC_MODE_MASK | (1 << 13) | (1 << 14) | (1 << 15)
# LVT index -> (register, apic_lvt_mask); LVT_CMCI (6) exists only with MCG_CMCI_P
LVTS = ((APIC_LVTT, _LVT_MASK), (APIC_LVTTHMR, _LVT_MASK | APIC_MODE_MASK),
        (APIC_LVTPC, _LVT_MASK | APIC_MODE_MASK), (APIC_LVT0, _LINT_MASK),
        (APIC_LVT1, _LINT_MASK), (APIC_LVTERR, _LVT_MASK),
        (APIC_LVTCMCI, _LVT_MASK | APIC_MODE_MASK))
_LVT_INDEX = {reg: i for i, (reg, _mask) in enumerate(LVTS)}
KVM_APIC_MAX_NR_LVT_ENTRIES = 7
MSR_IA32_TSC_DEADLINE = 0x6E0   # where the vCPU's lapic_timer.tscdeadline is kept


def x2apic_msr(reg: int) -> int:
    """X2APIC_MSR(r): the MSR of APIC register `r`."""
    return APIC_BASE_MSR + (reg >> 4)


class LapicCaps:
    """What a vCPU's APIC model depends on, fixed once its CPUID and MCG_CAP are set:
    apic->nr_lvt_entries (7 with CMCI), the LVR value (kvm_apic_set_version: directed EOI
    when the guest has x2APIC and the IOAPIC is not in the kernel, as for a TD's split
    irqchip) and lapic_timer.timer_mode_mask (TSC-deadline mode if the guest CPUID has it)."""

    __slots__ = ("nr_lvt_entries", "lvr", "timer_mode_mask")

    def __init__(self, cmci: bool, x2apic_cpuid: bool, tsc_deadline_cpuid: bool) -> None:
        self.nr_lvt_entries = KVM_APIC_MAX_NR_LVT_ENTRIES - (0 if cmci else 1)
        self.lvr = (APIC_VERSION | ((self.nr_lvt_entries - 1) << 16)
                    | (APIC_LVR_DIRECTED_EOI if x2apic_cpuid else 0))
        self.timer_mode_mask = (3 << 17) if tsc_deadline_cpuid else (1 << 17)


def kvm_lapic_reset(regs: dict[int, int], vcpu_id: int, caps: LapicCaps) -> None:
    """kvm_lapic_reset at vCPU creation, then the x2APIC enable of KVM_TDX_INIT_VCPU
    (kvm_apic_set_x2apic_id: ID = vCPU id, LDR derived from it).  vCPU 0 is the BSP: with
    the default KVM_X86_QUIRK_LINT0_REENABLED its LVT0 is ExtINT, unmasked."""
    regs[x2apic_msr(APIC_ID)] = vcpu_id
    regs[x2apic_msr(APIC_LDR)] = ((vcpu_id >> 4) << 16) | (1 << (vcpu_id & 0xF))
    regs[x2apic_msr(APIC_LVR)] = caps.lvr
    for i in range(caps.nr_lvt_entries):
        regs[x2apic_msr(LVTS[i][0])] = APIC_LVT_MASKED
    if vcpu_id == 0:
        regs[x2apic_msr(APIC_LVT0)] = 0x700
    regs[x2apic_msr(APIC_SPIV)] = 0xFF
    for reg in (APIC_TASKPRI, APIC_PROCPRI, APIC_ESR, APIC_ICR, APIC_TDCR, APIC_TMICT):
        regs[x2apic_msr(reg)] = 0
    for i in range(APIC_ISR_NR):
        for base in (APIC_ISR, APIC_TMR, APIC_IRR):
            regs[x2apic_msr(base + 0x10 * i)] = 0


def _readable(reg: int, caps: LapicCaps) -> bool:
    """kvm_lapic_readable_reg_mask in x2APIC mode (ARBPRI, DFR, ICR2 are not valid there;
    EOI and SELF_IPI are write-only; LVTCMCI only with CMCI)."""
    if reg in (APIC_ID, APIC_LVR, APIC_TASKPRI, APIC_PROCPRI, APIC_LDR, APIC_SPIV, APIC_ESR,
               APIC_LVTT, APIC_LVTTHMR, APIC_LVTPC, APIC_LVT0, APIC_LVT1, APIC_LVTERR,
               APIC_TMICT, APIC_TMCCT, APIC_TDCR):
        return True
    if APIC_ISR <= reg < APIC_IRR + 0x10 * APIC_ISR_NR:
        return True
    return reg == APIC_LVTCMCI and caps.nr_lvt_entries > 6


def timer_mode(regs: dict[int, int], caps: LapicCaps) -> int:
    """apic->lapic_timer.timer_mode: LVTT's mode bits within timer_mode_mask."""
    return regs[x2apic_msr(APIC_LVTT)] & caps.timer_mode_mask


def kvm_x2apic_msr_read(regs: dict[int, int], msr: int, caps: LapicCaps) -> tuple[int, int]:
    """kvm_x2apic_msr_read -> kvm_lapic_msr_read: the 64-bit ICR, else a readable register
    at offset <= 0x3F0 (its 32 bits), else 1.  Returns (r, data).

    Simplification: TMCCT's count-down is not modelled (it reads 0 when TMICT is 0 or in
    TSC-deadline mode, as in KVM, and TMICT otherwise); PROCPRI is not recomputed."""
    reg = (msr - APIC_BASE_MSR) << 4
    if reg == APIC_ICR:
        return 0, regs[msr]
    if reg > 0x3F0 or not _readable(reg, caps):
        return 1, 0
    if reg == APIC_TMCCT:
        if timer_mode(regs, caps) == APIC_LVT_TIMER_TSCDEADLINE:
            return 0, 0
        return 0, regs[x2apic_msr(APIC_TMICT)]
    return 0, regs[msr]


def kvm_x2apic_msr_write(regs: dict[int, int], msr: int, data: int,
                         caps: LapicCaps) -> tuple[int, tuple[int, int] | None]:
    """kvm_x2apic_msr_write -> kvm_lapic_msr_write -> kvm_lapic_reg_write.  Returns (r, the
    IPI to send as (ICR low, ICR high) or None); the caller sends it (kvm_apic_send_ipi).

    ICR: reserved bits -> 1; BUSY is cleared before the IPI and the store.  Other registers:
    bits 63:32 -> 1.  ID, LDR (and DFR, ICR2) are read-only in x2APIC mode; SPIV keeps bits
    9:0 (+ directed EOI if LVR has it) and, when software-disabling, masks every LVT; an LVT
    write is masked while the APIC is software-disabled and ANDed with its mask (LVTT with
    the timer mode bits; a mode change to or from TSC deadline clears TMICT and the
    deadline); TMICT is ignored in TSC-deadline mode; TDCR keeps bits 3, 1, 0; ESR takes
    only 0; SELF_IPI takes a vector only; anything else (LVR, TMCCT, ISR...) -> 1."""
    reg = (msr - APIC_BASE_MSR) << 4
    if reg == APIC_ICR:
        if data & X2APIC_ICR_RESERVED_BITS:
            return 1, None
        data &= ~APIC_ICR_BUSY
        regs[msr] = data
        return 0, (data & 0xFFFFFFFF, data >> 32)
    if data >> 32:
        return 1, None
    if reg == APIC_TASKPRI:
        regs[msr] = data & 0xFF
    elif reg == APIC_EOI:
        pass  # apic_set_eoi: the TD's ISR is in the TDX module's virtual APIC
    elif reg == APIC_SPIV:
        mask = 0x3FF | (APIC_SPIV_DIRECTED_EOI if caps.lvr & APIC_LVR_DIRECTED_EOI else 0)
        regs[msr] = data & mask
        if not data & APIC_SPIV_APIC_ENABLED:
            for i in range(caps.nr_lvt_entries):
                regs[x2apic_msr(LVTS[i][0])] |= APIC_LVT_MASKED
    elif reg in _LVT_INDEX:
        index = _LVT_INDEX[reg]
        if index >= caps.nr_lvt_entries:
            return 1, None
        if not regs[x2apic_msr(APIC_SPIV)] & APIC_SPIV_APIC_ENABLED:
            data |= APIC_LVT_MASKED
        if reg == APIC_LVTT:
            was_deadline = timer_mode(regs, caps) == APIC_LVT_TIMER_TSCDEADLINE
            regs[msr] = data & (LVTS[0][1] | caps.timer_mode_mask)
            if was_deadline != (timer_mode(regs, caps) == APIC_LVT_TIMER_TSCDEADLINE):
                regs[x2apic_msr(APIC_TMICT)] = 0   # apic_update_lvtt
                regs[MSR_IA32_TSC_DEADLINE] = 0  # lapic_timer.tscdeadline
        else:
            regs[msr] = data & LVTS[index][1]
    elif reg == APIC_TMICT:
        if timer_mode(regs, caps) != APIC_LVT_TIMER_TSCDEADLINE:
            regs[msr] = data
    elif reg == APIC_TDCR:
        regs[msr] = data & 0xB
    elif reg == APIC_ESR:
        return (1, None) if data else (0, None)
    elif reg == APIC_SELF_IPI:
        if data & ~0xFF:
            return 1, None
        return 0, (APIC_DEST_SELF | data, 0)
    else:
        return 1, None
    return 0, None


# --- IPIs --------------------------------------------------------------------------------------
def kvm_apic_match_dest(vcpu: Any, source: Any, shorthand: int, dest: int,
                        logical: bool) -> bool:
    """kvm_apic_match_dest for x2APIC destinations: the shorthand, else the physical ID or
    the logical cluster and bitmap of the LDR (0xFFFFFFFF is the broadcast)."""
    if shorthand == APIC_DEST_SELF:
        return vcpu is source
    if shorthand == APIC_DEST_ALLINC:
        return True
    if shorthand == APIC_DEST_ALLBUT:
        return vcpu is not source
    if dest == X2APIC_BROADCAST:
        return True
    vid = vcpu.vcpu_id
    if not logical:
        return bool(dest == vid)
    return (dest >> 16) == (vid >> 4) and bool(dest & 0xFFFF & (1 << (vid & 0xF)))


def apic_accept_irq(v: Any, icr_low: int, irq: IrqStats) -> int:
    """__apic_accept_irq for one destination, delivery mode and vector from `icr_low`:
    fixed and lowest priority post the vector (a level-triggered de-assert is dropped), NMI
    -> kvm_inject_nmi, APIC_DM_REMRD -> pv_unhalted + KVM_REQ_EVENT + kick (the PV unhalt of
    KVM_HC_KICK_CPU).  Returns 1 if accepted.

    Simplifications: SMI, INIT, SIPI and ExtINT are accepted with no effect; a
    software-disabled destination APIC still accepts (KVM drops fixed interrupts there; a
    Linux guest enables its APIC at boot)."""
    mode = icr_low & APIC_MODE_MASK
    if mode in (APIC_DM_FIXED, APIC_DM_LOWEST):
        if icr_low & APIC_INT_LEVELTRIG and not icr_low & APIC_INT_ASSERT:
            return 0
        v.stat["ipi.received"] += 1
        irq.post(v, icr_low & 0xFF, "ipi")
    elif mode == APIC_DM_NMI:
        v.kvm_inject_nmi()
    elif mode == APIC_DM_REMRD:
        v.pv_unhalted = True
        v.kvm_make_request(arch.KVM_REQ_EVENT)
        v.kvm_vcpu_kick()
    return 1


def kvm_apic_send_ipi(vcpu: Any, cpu: HostCpu, icr_low: int, icr_high: int, irq: IrqStats,
                      c_icr_write: int) -> int:
    """kvm_apic_send_ipi -> kvm_irq_delivery_to_apic: every destination the shorthand or
    the x2APIC destination (physical ID or logical cluster) matches accepts it
    (`apic_accept_irq`).  Returns how many accepted.  Simplification: lowest priority goes to
    the first matching vCPU (no arbitration or vector hashing)."""
    shorthand = icr_low & APIC_SHORT_MASK
    logical = bool(icr_low & APIC_DEST_LOGICAL)
    targets = [v for v in vcpu.vm.vcpus
               if kvm_apic_match_dest(v, vcpu, shorthand, icr_high, logical)]
    if icr_low & APIC_MODE_MASK == APIC_DM_LOWEST and shorthand == 0:
        targets = targets[:1]
    accepted = 0
    for v in targets:
        cpu.acc += c_icr_write
        accepted += apic_accept_irq(v, icr_low, irq)
    return accepted


def kvm_apic_send_ipi_pattern(sender: Any, cpu: HostCpu, icr: int, intr: InterruptConfig,
                              rng: random.Random, irq: IrqStats, c_icr_write: int) -> None:
    """The ICR write of a statistical guest (kvm_x2apic_icr_write -> kvm_apic_send_ipi ->
    kvm_irq_delivery_to_apic -> __apic_accept_irq -> deliver_interrupt per destination).  The
    destinations are the ones the guest's IPI pattern names, drawn from the VM's
    ``ipi.dest`` stream: unicast one other vCPU, multicast ``ipi_targets`` others,
    broadcast all others, shootdown ``shootdown_targets`` others (0 = all), whose acks the
    sender waits for."""
    vm = sender.vm
    pattern = intr.ipi_pattern
    others = [v for v in vm.vcpus if v is not sender]
    if not others:
        return
    if pattern == "unicast":
        targets = [rng.choice(others)]
    elif pattern == "multicast":
        targets = rng.sample(others, min(intr.ipi_targets, len(others)))
    elif pattern == "broadcast":
        targets = others
    else:
        n = intr.shootdown_targets or len(others)
        targets = rng.sample(others, min(n, len(others))) if n < len(others) else others
    vector = icr & 0xFF
    sstat = sender.stat
    sstat["ipi.sent"] += 1
    sstat["ipi.sent." + pattern] += 1
    if pattern == "shootdown":
        # receivers ack when they take the vector; register before posting (a running
        # receiver may take it inside the post)
        sd = Shootdown(sender, sender.env.now, len(targets))
        for v in targets:
            v.sd_waiters.append(sd)
    for v in targets:
        cpu.acc += c_icr_write
        v.stat["ipi.received"] += 1
        irq.post(v, vector, "ipi")
