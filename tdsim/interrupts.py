"""Interrupt sources of a run: the host tick, guest timers, device interrupts, remote TLB
flushes, VMM/watchdog NMIs and host NMIs (docs/interrupts.md).

All are off by default (``[host] tick_hz`` and ``nmi_hz``, ``[vm.workload] timer_hz``,
``[vm.interrupts]``):

* **Host tick** (``tick_hz``): a host interrupt on every CPU (a TD exit where a TD runs).
* **Guest timers** (``workload.timer_hz``, ``timer_mode``): the guest's LAPIC timer, a host
  hrtimer on the vCPU's CPU whose expiry posts the timer vector (`tdsim.lapic`); periodic,
  or one-shot TSC-deadline, whose handler re-arms it with a WRMSR(IA32_TSC_DEADLINE)
  TDVMCALL; ``[kvm] lapic_timer_advance_ns`` fires the hrtimer early and
  ``kvm_wait_lapic_expire`` spins at entry until the deadline.
* **Guest IPIs** (``ipi_hz``): the guest ends a compute period with an x2APIC ICR write
  instead of its mix call (`tdsim.guest_irq`); KVM emulates it (`tdsim.lapic`): per
  destination a posted interrupt (a running receiver takes it with no exit, a blocked one is
  woken).  Patterns: unicast (RESCHEDULE_VECTOR), multicast and broadcast
  (CALL_FUNCTION_VECTOR), shootdown (CALL_FUNCTION_VECTOR; the sender spins in the guest
  until every receiver has taken it, charged as guest time in its next compute period).
* **Device interrupts** (``device_irq_hz``): an MSI posted by a host thread on a CPU outside
  the TD's (irqfd), round robin over ``device_irq_vcpus``; no host interrupt on the vCPU's CPU.
  With ``device_posting = "vtd"`` the IOMMU posts them into the PI descriptor instead (SN,
  the wake-up vector and ``pi_wakeup_handler``: `tdsim.kvm_tdx`).
* **NMIs** (``nmi_hz``): ``kvm_inject_nmi`` -> ``process_nmi`` in request processing ->
  ``tdx_inject_nmi`` = TDH.VP.WR of PEND_NMI before ``prepare_switch_to_guest``; the module
  delivers it at the next TD entry, whatever late abort happens in between.  PEND_NMI is one
  bit: NMIs arriving before delivery collapse (``nmi.coalesced``).
* **Host NMIs** (``[host] nmi_hz``): an NMI on a CPU running a TD makes it exit with
  EXCEPTION_NMI; elsewhere it is handled in place (not charged).
* **Remote TLB flushes** (``tlb_flush_hz``): KVM_REQ_TLB_FLUSH on every vCPU plus a kick.
* **HLT with interrupts disabled** (``hlt_irqs_off_p``): R12 = 1, ``tdx_interrupt_allowed`` is
  false, only an NMI wakes the vCPU (posted interrupts wake its thread spuriously).

Delivery latencies and the interrupt oracles are kept by `tdsim.irqstats`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .arch import KVM_REQ_TLB_FLUSH, OUTSIDE_GUEST_MODE
from .host import HOST_IRQ, HOST_NMI, ProcessGenerator
from .rng import exp_ns, stream
from .scope import cpu_name, vm_stream

if TYPE_CHECKING:
    from .clock import Environment
    from .faults import Tap
    from .host import HostCpu, Stat
    from .irqstats import IrqStats
    from .kvm_x86 import KvmVcpu

DEVICE_VECTOR = 0x22  # first vector the guest hands to a device MSI (any external vector)
_HOST_IRQ_TICK = HOST_IRQ["tick"]


def host_tick(env: Environment, cpus: Sequence[HostCpu], period_ns: int) -> ProcessGenerator:
    """The host timer tick: a host interrupt on every CPU (a TD exit where a TD runs)."""
    while True:
        yield env.timeout(period_ns)
        for cpu in cpus:
            cpu.host_irq(_HOST_IRQ_TICK)


def poisson(env: Environment, rng: random.Random, rate_hz: float, fire: Callable[[Any], None],
            target: Any) -> ProcessGenerator:
    """A Poisson source at `rate_hz` on its own stream, calling fire(target)."""
    mean = 1e9 / rate_hz
    while True:
        yield env.timeout(exp_ns(rng, mean))
        fire(target)


def device_irqs(env: Environment, rng: random.Random, rate_hz: float,
                targets: Sequence[KvmVcpu], fire: Callable[[KvmVcpu], None]
                ) -> ProcessGenerator:
    """MSIs of a device (irqfd from a host thread outside the model), round robin over
    `targets`; `fire` is `device_irq` bound to the run's `IrqStats`."""
    mean = 1e9 / rate_hz
    i = 0
    while True:
        yield env.timeout(exp_ns(rng, mean))
        vcpu = targets[i % len(targets)]
        i += 1
        fire(vcpu)


def device_irq(irq: IrqStats, vtd: bool = False) -> Callable[[KvmVcpu], None]:
    """One device MSI posted to a vCPU: by KVM (irqfd), or with `vtd` (``device_posting =
    "vtd"``) by the IOMMU into the vCPU's PI descriptor."""
    if vtd:
        def fire_vtd(vcpu: KvmVcpu) -> None:
            vcpu.stat["device_irq"] += 1
            irq.post_vtd(vcpu, DEVICE_VECTOR, "device")
        return fire_vtd

    def fire(vcpu: KvmVcpu) -> None:
        vcpu.stat["device_irq"] += 1
        irq.post(vcpu, DEVICE_VECTOR, "device")
    return fire


def tlb_flushes(env: Environment, rng: random.Random, rate_hz: float,
                vcpus: Sequence[KvmVcpu],
                fire: Callable[[Sequence[KvmVcpu]], None]) -> ProcessGenerator:
    """Poisson arrivals of `kvm_flush_remote_tlbs` (`fire`) for one VM."""
    mean = 1e9 / rate_hz
    while True:
        yield env.timeout(exp_ns(rng, mean))
        fire(vcpus)


def kvm_flush_remote_tlbs(vcpus: Sequence[KvmVcpu]) -> None:
    """kvm_flush_remote_tlbs -> kvm_make_all_cpus_request(KVM_REQ_TLB_FLUSH) from a host
    thread outside the model: every vCPU gets the request; vCPUs in guest mode are kicked
    (the requester's wait is not modelled); halted ones are not woken
    (KVM_REQUEST_NO_WAKEUP)."""
    for vcpu in vcpus:
        vcpu.kvm_make_request(KVM_REQ_TLB_FLUSH)
        vcpu.stat["tlb_flush_requests"] += 1
        if vcpu.mode != OUTSIDE_GUEST_MODE:  # kvm_request_needs_ipi
            vcpu.kvm_vcpu_kick()


def host_nmi(host_stat: Stat) -> Callable[[HostCpu], None]:
    """A host NMI on a CPU (perf, watchdog): a guest running there exits (EXCEPTION_NMI);
    otherwise the host takes it in place."""
    def fire(cpu: HostCpu) -> None:
        host_stat["host_nmi"] += 1
        cpu.host_irq(HOST_NMI)
    return fire


def start(env: Environment, seed: int, vms: Sequence[Any], cpus: Sequence[HostCpu],
          host_nmi_hz: float, irq: IrqStats, host_stat: Stat, tap: Tap | None = None) -> None:
    """Start the configured device, TLB-flush and NMI sources (build phase).  `tap`
    (recording, `tdsim.choices`) wraps each source's injection when given."""
    def tapped(name: str, fire: Callable[..., None]) -> Callable[..., None]:
        return fire if tap is None else tap(name, fire)

    for vm in vms:
        intr = vm.interrupts
        if intr is None:
            continue
        if intr.device_irq_hz > 0:
            targets = [vm.vcpus[i] for i in intr.device_irq_vcpus]
            env.process(device_irqs(env, vm_stream(seed, vm.name, "device_irq"),
                                    intr.device_irq_hz, targets,
                                    tapped("device_irq", device_irq(
                                        irq, intr.device_posting == "vtd"))))
        if intr.tlb_flush_hz > 0:
            env.process(tlb_flushes(env, vm_stream(seed, vm.name, "tlb_flush"),
                                    intr.tlb_flush_hz, vm.vcpus,
                                    tapped("tlb_flush", kvm_flush_remote_tlbs)))
        if intr.nmi_hz > 0:
            inject_nmi = tapped("nmi", vmm_inject_nmi)
            for vcpu in vm.vcpus:
                env.process(poisson(env, vcpu.scope.stream(seed, "nmi"), intr.nmi_hz,
                                    inject_nmi, vcpu))
    if host_nmi_hz > 0:
        fire = tapped("host_nmi", host_nmi(host_stat))
        for cpu in cpus:
            env.process(poisson(env, stream(seed, f"{cpu_name(cpu.index)}.nmi"), host_nmi_hz,
                                fire, cpu))


def vmm_inject_nmi(vcpu: KvmVcpu) -> None:
    """The VMM (or a watchdog) injects an NMI (KVM_NMI -> kvm_inject_nmi)."""
    vcpu.kvm_inject_nmi()
