"""Interrupt bookkeeping of a run: delivery latencies, NMI accounting and the interrupt oracles.

Posted interrupts themselves (PIR, ON, notification, self-IPI at entry) are vendor code
(`tdsim.kvm_tdx`); this module records, per vCPU, *when* and *from which source* each pending
vector was posted, so the moment the guest takes it yields a delivery latency, written out as
percentiles (``irq.latency_ns.<source>.p50/p90/p99/max/count``; per vCPU p50/p99/max).  The
interrupt sources live in `tdsim.interrupts`.

Oracles (declared in `tdsim.findings`): ``lost_interrupt`` (a vector posted before a TD entry
is still pending after it; a one-shot timer fired and never re-armed), ``stuck_halt`` (a vCPU
left blocked while it has a deliverable interrupt or NMI), ``nmi_accounting`` (NMIs injected
!= delivered + coalesced + outstanding at the end).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from . import arch
from .segment import PH_BLOCKED

if TYPE_CHECKING:
    from .findings import Findings
    from .host import HostCpu, Stat

PERCENTILES = (("p50", 50), ("p90", 90), ("p99", 99))
CALL_FUNCTION_VECTOR = 0xFC  # Linux guest vectors (arch/x86/include/asm/irq_vectors.h)


class IrqVcpu(Protocol):
    """What the bookkeeping reads of a vCPU (`tdsim.kvm_tdx.VcpuTdx`, `tdsim.kvm_vmx.VcpuVmx`)."""

    name: str
    vcpu_id: int
    vm: Any
    stat: Stat
    cpu: HostCpu
    phase: int
    guest: Any
    kvm_x86_ops: Any


def percentiles(samples: list[int]) -> dict[str, int]:
    """Nearest-rank percentiles, max and count of `samples` (non-empty)."""
    s = sorted(samples)
    n = len(s)
    out = {name: s[max(0, -(-p * n // 100) - 1)] for name, p in PERCENTILES}
    out["max"] = s[-1]
    out["count"] = n
    return out


class Shootdown:
    """One TLB shootdown in flight: its sender, when the ICR write was handled, acks due."""

    __slots__ = ("sender", "t0", "pending")

    def __init__(self, sender: Any, t0: int, pending: int) -> None:
        self.sender = sender
        self.t0 = t0
        self.pending = pending


class IrqStats:
    """Delivery-latency samples and NMI accounting of one run, and the interrupt oracles."""

    def __init__(self, env: Any, findings: Findings, t_measure: int) -> None:
        self.env = env
        self.findings = findings
        self.t_measure = t_measure  # samples count for events that start after the warm-up
        self.samples: dict[str, list[int]] = {}
        self.vcpu_samples: dict[tuple[Any, str], list[int]] = {}  # (vcpu, key) -> samples
        self.nmi_injected = 0
        self.nmi_delivered = 0
        self.nmi_coalesced = 0

    def sample(self, key: str, t0: int, value: int, vcpu: IrqVcpu) -> None:
        """Keep one sample of `vcpu` (only for events that started after the warm-up)."""
        if t0 >= self.t_measure:
            lst = self.samples.get(key)
            if lst is None:
                self.samples[key] = lst = []
            lst.append(value)
            per = self.vcpu_samples.get((vcpu, key))
            if per is None:
                self.vcpu_samples[(vcpu, key)] = per = []
            per.append(value)

    # --- posted interrupts ---------------------------------------------------------------
    def post(self, vcpu: IrqVcpu, vector: int, source: str) -> None:
        """A source delivers `vector` to `vcpu` (kvm_x86_ops.deliver_interrupt) and the
        stuck-halt oracle checks that a blocked vCPU that may take it was woken."""
        ops = vcpu.kvm_x86_ops
        ops.deliver_interrupt(vcpu, vector, source)
        if vcpu.phase == PH_BLOCKED and ops.interrupt_allowed(vcpu):
            self.findings.record(
                "stuck_halt", vcpu.cpu.index if vcpu.cpu else -1, vcpu.name,
                f"vector {vector:#x} ({source}) posted but the halted vCPU was not woken")

    def posted(self, vcpu: Any, vector: int, source: str) -> None:
        """`vector` newly entered the PIR of `vcpu`."""
        vcpu.pi_src[vector] = (self.env.now, source)
        vcpu.stat["irq.posted." + source] += 1

    def taken(self, vcpu: Any, t: int) -> None:
        """The guest takes every pending vector at time `t` (shootdown receivers ack; a
        one-shot timer vector makes the guest's handler re-arm it)."""
        stat = vcpu.stat
        for vector, (t_post, source) in vcpu.pi_src.items():
            lat = t - t_post
            if lat < 0:
                raise AssertionError(f"tdsim bug: {vcpu.name} took vector {vector:#x} at {t} "
                                     f"before it was posted at {t_post}")
            stat["irq.taken." + source] += 1
            stat["irq.latency_ns_sum." + source] += lat
            self.sample(source, t_post, lat, vcpu)
            if vector == CALL_FUNCTION_VECTOR and vcpu.sd_waiters:
                self._ack_shootdowns(vcpu, t)
            elif vector == arch.LOCAL_TIMER_VECTOR and vcpu.oneshot_period:
                guest = vcpu.guest
                if guest.rearm_planned:
                    guest.rearm_planned = False
                else:
                    guest.rearm_due = True  # re-armed at its next planned entry
        vcpu.pi_src.clear()

    def _ack_shootdowns(self, vcpu: Any, t: int) -> None:
        for sd in vcpu.sd_waiters:
            sd.pending -= 1
            if sd.pending == 0:
                spin = max(0, t - sd.t0)
                sender = sd.sender
                sender.stat["ipi.shootdowns"] += 1
                sender.stat["ipi.shootdown_spin_ns"] += spin
                sender.guest.irq_debt_ns += spin
                self.sample("shootdown", sd.t0, spin, sender)
        vcpu.sd_waiters.clear()

    def check_entry(self, vcpu: Any) -> None:
        """Oracle after a TD entry (PI processing done): no vector posted before the entry
        may still be pending."""
        t_enter = vcpu.t_enter
        for vector, (t_post, source) in vcpu.pi_src.items():
            if t_post < t_enter:
                self.findings.record(
                    "lost_interrupt", vcpu.cpu.index, vcpu.name,
                    f"vector {vector:#x} ({source}) posted at {t_post} still pending after "
                    f"the TD entry at {t_enter}")
                break

    # --- the end of the run --------------------------------------------------------------
    def check_end(self, vcpus: list[Any]) -> None:
        """End-of-run oracles: no vCPU halted with a deliverable event; NMI accounting."""
        outstanding = 0
        for vcpu in vcpus:
            if vcpu.vm.flavor != "tdx":  # VMX co-tenants have no TDX NMI state
                continue
            nmi_out = (vcpu.nmi_queued + vcpu.nmi_pending
                       + vcpu.module_fields.get("PEND_NMI", 0))
            outstanding += nmi_out
            irq = (vcpu.pi_on or vcpu.pir) and vcpu.tdx_interrupt_allowed()
            if vcpu.phase == PH_BLOCKED and (irq or nmi_out or vcpu.requests & arch.KVM_REQ_NMI):
                self.findings.record("stuck_halt", vcpu.cpu.index, vcpu.name,
                                     "halted at the end of the run with a deliverable "
                                     "interrupt or NMI")
            if vcpu.oneshot_period:
                # a fired one-shot timer must be re-armed or on its way to be
                guest = vcpu.guest
                fired_unarmed = vcpu.stat["timer_fired"] - vcpu.stat["timer_armed"]
                if fired_unarmed > 1 or (fired_unarmed == 1 and not (
                        arch.LOCAL_TIMER_VECTOR in vcpu.pi_src or guest.rearm_due
                        or guest.rearm_planned or guest.kind == "tsc_deadline")):
                    self.findings.record("lost_interrupt", vcpu.cpu.index, vcpu.name,
                                         "one-shot timer fired but never re-armed")
        if self.nmi_injected != self.nmi_delivered + self.nmi_coalesced + outstanding:
            self.findings.record(
                "nmi_accounting", -1, None,
                f"{self.nmi_injected} NMIs injected but {self.nmi_delivered} delivered + "
                f"{self.nmi_coalesced} coalesced + {outstanding} outstanding")

    def collect(self, metrics: dict[str, int | float]) -> None:
        """Latency percentiles as flat keys: all vCPUs (p50/p90/p99/max/count), and per vCPU
        (p50/p99/max under ``vm.<name>.vcpu.<i>.``)."""
        for key, samples in self.samples.items():
            for name, value in percentiles(samples).items():
                metrics[_prefix(key) + name] = value
        for (vcpu, key), samples in self.vcpu_samples.items():
            prefix = vcpu.scope.metric_prefix + _prefix(key)
            p = percentiles(samples)
            for name in ("p50", "p99", "max"):
                metrics[prefix + name] = p[name]


def _prefix(key: str) -> str:
    if key == "shootdown":
        return "ipi.shootdown_ns."
    if key == "wakeup":
        return "halt.wakeup_latency_ns."
    return f"irq.latency_ns.{key}."
