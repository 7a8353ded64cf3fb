"""Interrupt bookkeeping of a run: delivery latencies, NMI accounting and the interrupt oracles.

Posted interrupts themselves (PIR, ON, notification, self-IPI at entry) are vendor code
(`tdsim.kvm_tdx`); this module records, per vCPU, *when* and *from which source* each pending
vector was posted, so the moment the guest takes it yields a delivery latency, written out as
percentiles (``irq.latency_ns.<source>.p50/p90/p99/max/count``; per vCPU p50/p99/max).  The
interrupt sources live in `tdsim.interrupts`.

Oracles (declared in `tdsim.findings`): ``lost_interrupt`` (a vector posted before a TD entry
is still pending after it; a one-shot timer fired and never re-armed), ``stuck_halt`` (a vCPU
left blocked while it has a deliverable interrupt or NMI), ``nmi_accounting`` (per vCPU, NMIs
injected != delivered + coalesced + outstanding at the end; naming the first lost injection).
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
        stuck-halt oracle checks that a blocked vCPU that may take it was woken -- or, with
        device posting, has its wake-up on the way (KVM's posting found ON already set by
        the IOMMU, whose notification on the wake-up vector is in flight)."""
        ops = vcpu.kvm_x86_ops
        ops.deliver_interrupt(vcpu, vector, source)
        if (vcpu.phase == PH_BLOCKED and ops.interrupt_allowed(vcpu)
                and not _wakeup_vector_pending(vcpu)):
            now = self.env.now
            self.findings.record(
                "stuck_halt", vcpu.cpu.index if vcpu.cpu else -1, vcpu.name,
                f"vector {vector:#x} ({source}) posted but the halted vCPU was not woken",
                cause=(now, f"vector {vector:#x} ({source}) posted to the halted vCPU, "
                            "which was not woken"))

    def post_vtd(self, vcpu: Any, vector: int, source: str) -> None:
        """The IOMMU posts `vector` to TD vCPU `vcpu` (``device_posting = "vtd"``), and the
        stuck-halt oracle checks that a blocked vCPU that may take it has its wake-up on the
        way: ON set with the wake-up vector as NV (its notification runs
        pi_wakeup_handler)."""
        vcpu.iommu_post_interrupt(vector, source)
        if (vcpu.phase == PH_BLOCKED and vcpu.tdx_interrupt_allowed()
                and not _wakeup_vector_pending(vcpu)):
            now = self.env.now
            self.findings.record(
                "stuck_halt", vcpu.cpu.index if vcpu.cpu else -1, vcpu.name,
                f"vector {vector:#x} ({source}) posted by the IOMMU but no wake-up is on its "
                "way to the halted vCPU",
                cause=(now, f"vector {vector:#x} ({source}) posted by the IOMMU to the halted "
                            f"vCPU (NV {vcpu.pi_nv:#x}, SN {int(vcpu.pi_sn)})"))

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
                    f"the TD entry at {t_enter}",
                    cause=(t_post, f"vector {vector:#x} ({source}) posted"))
                break

    # --- NMI accounting -------------------------------------------------------------------
    # Where each injected NMI of a vCPU is: queued or pending (``vcpu.nmi_times``, injection
    # times, oldest first), written to PEND_NMI (``vcpu.nmi_pend_t``), delivered or coalesced.
    # An NMI that leaves PEND_NMI without a delivery has vanished (``vcpu.nmi_vanished``).
    def nmi_written(self, vcpu: Any, pend_set: bool) -> None:
        """tdx_inject_nmi writes PEND_NMI (already set: `pend_set`): the oldest pending NMI
        is the one written, unless one is still there; the others are coalesced."""
        if vcpu.nmi_pend_t >= 0 and not pend_set:
            vcpu.nmi_vanished.append(vcpu.nmi_pend_t)
            vcpu.nmi_pend_t = -1
        times = vcpu.nmi_times
        if vcpu.nmi_pend_t < 0 and times:
            vcpu.nmi_pend_t = times.popleft()
        times.clear()

    def nmi_delivered(self, vcpu: Any, t: int) -> None:
        """The module delivers PEND_NMI at TD entry `t`.  One that no injection put there is a
        finding at once."""
        if vcpu.nmi_pend_t < 0:
            self.findings.record(
                "nmi_accounting", vcpu.cpu.index, vcpu.name,
                f"an NMI delivered at TD entry {t} that was never injected (kvm_inject_nmi)",
                cause=(t, "PEND_NMI set with no NMI injected"))
        vcpu.nmi_pend_t = -1

    def check_nmis(self, vcpu: Any) -> int:
        """End-of-run NMI accounting of one TD vCPU: every NMI injected was delivered,
        coalesced into PEND_NMI, or is still outstanding (queued, pending or in PEND_NMI).
        The finding names the first injection lost.  Returns the outstanding NMIs."""
        pend = vcpu.module_fields.get("PEND_NMI", 0)
        outstanding: int = vcpu.nmi_queued + vcpu.nmi_pending + pend
        if vcpu.nmi_pend_t >= 0 and not pend:
            vcpu.nmi_vanished.append(vcpu.nmi_pend_t)
            vcpu.nmi_pend_t = -1
        stat = vcpu.stat
        lost = (stat["nmi.injected"] - stat["nmi.delivered"] - stat["nmi.coalesced"]
                - outstanding)
        if lost:
            counts = (f"{stat['nmi.injected']} NMIs injected, {stat['nmi.delivered']} "
                      f"delivered + {stat['nmi.coalesced']} coalesced + {outstanding} "
                      "outstanding")
            if lost > 0 and vcpu.nmi_vanished:
                t = vcpu.nmi_vanished[0]
                self.findings.record(
                    "nmi_accounting", vcpu.cpu.index, vcpu.name,
                    f"{counts}: {lost} lost; the first, injected at {t}, was written to "
                    "PEND_NMI and left it undelivered",
                    cause=(t, "NMI injected (kvm_inject_nmi), lost from PEND_NMI"))
            elif lost > 0 and vcpu.nmi_times:
                t = vcpu.nmi_times[0]
                self.findings.record(
                    "nmi_accounting", vcpu.cpu.index, vcpu.name,
                    f"{counts}: {lost} lost, the first injected at {t} (never written to "
                    "PEND_NMI)", cause=(t, "NMI injected (kvm_inject_nmi), lost"))
            else:
                self.findings.record("nmi_accounting", vcpu.cpu.index, vcpu.name,
                                     f"{counts}: {-lost} more accounted for than injected"
                                     if lost < 0 else f"{counts}: {lost} lost")
        return outstanding

    # --- the end of the run --------------------------------------------------------------
    def check_end(self, vcpus: list[Any]) -> None:
        """End-of-run oracles: no vCPU halted with a deliverable event (an interrupt whose
        wake-up-vector notification is still in flight is on its way); NMI accounting."""
        for vcpu in vcpus:
            if vcpu.vm.flavor != "tdx":  # VMX co-tenants have no TDX NMI state
                continue
            nmi_out = self.check_nmis(vcpu)
            irq = ((vcpu.pi_on or vcpu.pir) and vcpu.tdx_interrupt_allowed()
                   and not (vcpu.vtd_pi and _wakeup_vector_pending(vcpu)))
            if vcpu.phase == PH_BLOCKED and (irq or nmi_out or vcpu.requests & arch.KVM_REQ_NMI):
                pending = [(t, f"vector {v:#x} ({src}) posted") for v, (t, src)
                           in vcpu.pi_src.items()] if irq else []
                if vcpu.nmi_t0 is not None:
                    pending.append((vcpu.nmi_t0, "NMI injected (kvm_inject_nmi)"))
                self.findings.record("stuck_halt", vcpu.cpu.index, vcpu.name,
                                     "halted at the end of the run with a deliverable "
                                     "interrupt or NMI",
                                     cause=min(pending) if pending else None)
            if vcpu.oneshot_period:
                # a fired one-shot timer must be re-armed or on its way to be
                guest = vcpu.guest
                fired_unarmed = vcpu.stat["timer_fired"] - vcpu.stat["timer_armed"]
                if fired_unarmed > 1 or (fired_unarmed == 1 and not (
                        arch.LOCAL_TIMER_VECTOR in vcpu.pi_src or guest.rearm_due
                        or guest.rearm_planned or guest.kind == "tsc_deadline")):
                    self.findings.record("lost_interrupt", vcpu.cpu.index, vcpu.name,
                                         "one-shot timer fired but never re-armed",
                                         cause=(vcpu.timer_deadline, "the one-shot guest "
                                                "timer fired (its last deadline)"))

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


def _wakeup_vector_pending(vcpu: Any) -> bool:
    """A TD vCPU with device posting whose PI descriptor has ON set and the wake-up vector
    as NV: the IOMMU's notification, which runs pi_wakeup_handler, is on its way."""
    return bool(vcpu.vm.flavor == "tdx" and vcpu.vtd_pi and vcpu.pi_on
                and vcpu.pi_nv == arch.POSTED_INTR_WAKEUP_VECTOR)


def _prefix(key: str) -> str:
    if key == "shootdown":
        return "ipi.shootdown_ns."
    if key == "wakeup":
        return "halt.wakeup_latency_ns."
    return f"irq.latency_ns.{key}."
