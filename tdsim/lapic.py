"""KVM's local APIC emulation as far as a TD uses it (arch/x86/kvm/lapic.c): the guest timer's
hrtimer, the TSC-deadline MSR, and the x2APIC ICR write that sends a guest IPI.

A TD's APIC is protected: KVM cannot read it, but it still emulates the timer (an hrtimer on
the host whose expiry posts the timer vector) and the ICR write the guest's #VE handler turns
into a TDVMCALL WRMSR(0x830).  Every vector reaches its vCPU as a posted interrupt through
`tdsim.irqstats.IrqStats.post` (kvm_x86_ops.deliver_interrupt plus the stuck-halt oracle).
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


def kvm_x2apic_icr_write(vcpu: Any, cpu: HostCpu, icr: int, irq: IrqStats,
                         c_icr_write: int) -> None:
    """kvm_x2apic_icr_write -> kvm_apic_send_ipi for a scripted guest: fixed delivery of
    vector bits 7:0 to the destination shorthand (bits 19:18: 0 = the x2APIC ID in bits
    63:32, here the vCPU index; 1 self; 2 all; 3 all but self); each destination gets a
    posted interrupt.  Logical destinations are not modelled."""
    vector = icr & 0xFF
    shorthand = (icr >> 18) & 3
    vcpus = vcpu.vm.vcpus
    if shorthand == 0:
        dest = icr >> 32
        targets = [vcpus[dest]] if dest < len(vcpus) else []
    elif shorthand == 1:
        targets = [vcpu]
    elif shorthand == 2:
        targets = list(vcpus)
    else:
        targets = [v for v in vcpus if v is not vcpu]
    vcpu.stat["ipi.sent"] += 1
    for v in targets:
        cpu.acc += c_icr_write
        v.stat["ipi.received"] += 1
        irq.post(v, vector, "ipi")


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
