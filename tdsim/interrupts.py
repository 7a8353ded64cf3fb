"""Interrupt sources of a TD and what they cost: guest IPIs, device interrupts, VMM/watchdog
NMIs, host NMIs; delivery-latency tracking and the interrupt oracles (reference §5).

Posted interrupts themselves (PIR, ON, notification, self-IPI at entry) are vendor code in
`tdsim.kvm_tdx` (``pi_post`` / ``deliver_pi``); this module adds, per vCPU, *when* and *from
which source* each pending vector was posted, so the moment the guest takes it (``deliver_pi``)
yields a delivery latency.  ``IrqStats`` (``sim.irq``) owns the samples and writes them out as
percentiles: ``irq.latency_ns.<source>.p50/p90/p99/max/count``.

Sources (all off by default, see ``[vm.interrupts]`` and ``[host] nmi_hz``):

* **Guest IPIs** (``ipi_hz``): the guest ends a compute period with an x2APIC ICR write instead
  of its mix call: #VE -> TDVMCALL WRMSR(0x830) -> TD exit -> KVM emulates the ICR write
  (``kvm_x2apic_icr_write``): per destination a PI post (a running receiver takes it with no
  exit, a blocked one is woken) -> the sender re-enters.  The rate is per second of guest run
  time (a halted vCPU sends none).  Patterns: unicast (RESCHEDULE_VECTOR), multicast and
  broadcast (CALL_FUNCTION_VECTOR), shootdown (CALL_FUNCTION_VECTOR; the sender spins in the
  guest until every receiver has taken it -- the spin is charged to the sender as guest time in
  its next compute period, the same deferred-debt device the model uses for interrupt
  handlers; ``ipi.shootdown_ns.*`` is the time from the ICR write to the last ack).
* **Device interrupts** (``device_irq_hz``): an MSI posted by a host thread on a CPU outside
  the TD's (irqfd), round robin over ``device_irq_vcpus``; no host interrupt on the vCPU's CPU.
* **NMIs** (``nmi_hz``): ``kvm_inject_nmi`` (nmi_queued++, KVM_REQ_NMI, kick) ->
  ``process_nmi`` in request processing -> ``tdx_inject_nmi`` = TDH.VP.WR of PEND_NMI before
  ``prepare_switch_to_guest``; the module delivers it at the next TD entry, whatever late
  abort happens in between.  PEND_NMI is one bit: NMIs arriving before delivery collapse
  (``nmi.coalesced``).
* **Host NMIs** (``[host] nmi_hz``): an NMI on a CPU running a TD makes it exit with
  EXCEPTION_NMI; elsewhere it is handled in place (not charged).
* **Guest timer modes** (``workload.timer_mode``): periodic (the foundation's hrtimer) or
  one-shot TSC-deadline, whose handler re-arms it with a WRMSR(IA32_TSC_DEADLINE) TDVMCALL;
  ``[kvm] lapic_timer_advance_ns`` fires the hrtimer early and ``kvm_wait_lapic_expire``
  spins at entry until the deadline (in `tdsim.kvm_tdx`).
* **Remote TLB flushes** (``tlb_flush_hz``): KVM_REQ_TLB_FLUSH on every vCPU plus a kick.
* **HLT with interrupts disabled** (``hlt_irqs_off_p``): R12 = 1, ``tdx_interrupt_allowed``
  is false, only an NMI wakes the vCPU (posted interrupts wake its thread spuriously).

A posted interrupt reaches a running TD when the notification IPI arrives (``ipi_ns`` after
the post); a vCPU that exited meanwhile takes it at its next entry.  ``irq_exits.<source>``
splits EXTERNAL_INTERRUPT exits by the host interrupt behind them.

Oracles (recorded as violations, see `tdsim.invariants`): ``lost_interrupt`` (a vector posted
before a TD entry is still pending after it), ``stuck_halt`` (a vCPU left blocked while it
has a deliverable interrupt or NMI), ``nmi_accounting`` (NMIs injected != delivered +
coalesced + outstanding at the end).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import arch
from .kvm_x86 import (
    KVM_REQ_EVENT,
    KVM_REQ_NMI,
    KVM_REQ_TLB_FLUSH,
    OUTSIDE_GUEST_MODE,
    PH_BLOCKED,
    PH_SEG,
)
from .rng import exp_ns, stream

if TYPE_CHECKING:
    from .host import HostCpu
    from .kvm_tdx import VcpuTdx
    from .sim import Simulation

# Linux guest vectors (arch/x86/include/asm/irq_vectors.h)
RESCHEDULE_VECTOR = 0xFD
CALL_FUNCTION_VECTOR = 0xFC
DEVICE_VECTOR = 0x22  # first vector the guest hands to a device MSI (any external vector)
MSR_X2APIC_ICR = 0x830
MSR_IA32_TSC_DEADLINE = 0x6E0

PERCENTILES = (("p50", 50), ("p90", 90), ("p99", 99))
SOURCES = ("timer", "ipi", "device", "nmi")

_IPI_VECTOR = {"unicast": RESCHEDULE_VECTOR, "multicast": CALL_FUNCTION_VECTOR,
               "broadcast": CALL_FUNCTION_VECTOR, "shootdown": CALL_FUNCTION_VECTOR}
# x2APIC ICR destination shorthand (bits 19:18): 0 = destination field, 3 = all excluding self
_ICR_SHORTHAND = {"unicast": 0, "multicast": 0, "broadcast": 3 << 18, "shootdown": 0}


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

    def __init__(self, sender: "VcpuTdx", t0: int, pending: int) -> None:
        self.sender = sender
        self.t0 = t0
        self.pending = pending


class IrqStats:
    """Delivery-latency samples, NMI accounting and the interrupt sources of one run."""

    def __init__(self, sim: "Simulation") -> None:
        self.sim = sim
        self.samples: dict[str, list[int]] = {}
        self.vcpu_samples: dict[tuple, list[int]] = {}  # (vcpu, key) -> samples
        self.nmi_injected = 0
        self.nmi_delivered = 0
        self.nmi_coalesced = 0
        self.t_measure = sim.warmup_ns if 0 < sim.warmup_ns < sim.duration_ns else 0

    def sample(self, key: str, t0: int, value: int, vcpu) -> None:
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
    def post(self, vcpu: "VcpuTdx", vector: int, source: str) -> None:
        """Post `vector` to `vcpu` (``__vmx_deliver_posted_interrupt``) and check the
        stuck-halt oracle: after a post, a blocked vCPU must have been woken."""
        vcpu.pi_post(vector, source)
        if vcpu.phase == PH_BLOCKED and vcpu.tdx_interrupt_allowed():
            self.sim.invariants.record(
                "stuck_halt", vcpu.cpu.index if vcpu.cpu else -1, vcpu.name,
                f"vector {vector:#x} ({source}) posted but the halted vCPU was not woken")

    def posted(self, vcpu: "VcpuTdx", vector: int, source: str) -> None:
        """Called by pi_post when `vector` newly enters the PIR."""
        vcpu.pi_src[vector] = (self.sim.env.now, source)
        vcpu.stat["irq.posted." + source] += 1

    def taken(self, vcpu: "VcpuTdx", t: int) -> None:
        """Called by deliver_pi: the guest takes every pending vector at time `t`."""
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

    def check_entry(self, vcpu: "VcpuTdx") -> None:
        """Oracle after a TD entry (PI processing done): no vector posted before the entry
        may still be pending."""
        t_enter = vcpu.t_enter
        for vector, (t_post, source) in vcpu.pi_src.items():
            if t_post < t_enter:
                self.sim.invariants.record(
                    "lost_interrupt", vcpu.cpu.index, vcpu.name,
                    f"vector {vector:#x} ({source}) posted at {t_post} still pending after "
                    f"the TD entry at {t_enter}")
                break

    # --- one-shot timers ------------------------------------------------------------------
    def arm_oneshot(self, vcpu: "VcpuTdx", period: int, first_ns: int) -> None:
        """Build phase: the guest's first deadline, `first_ns` from now."""
        vcpu.oneshot_period = period
        self._hrtimer_start(vcpu, first_ns)

    def _hrtimer_start(self, vcpu: "VcpuTdx", delay_ns: int) -> None:
        """hrtimer_start for the deadline `delay_ns` from now (advanced by
        lapic_timer_advance_ns)."""
        vcpu.timer_gen += 1
        gen = vcpu.timer_gen
        deadline = self.sim.env.now + delay_ns
        ev = self.sim.env.timeout(max(0, delay_ns - self.sim.lapic_timer_advance_ns))
        ev.callbacks.append(lambda _e: self._oneshot_fire(vcpu, gen, deadline))

    def _oneshot_fire(self, vcpu: "VcpuTdx", gen: int, deadline: int) -> None:
        """apic_timer_fn on the vCPU's CPU: the hrtimer interrupt, then the timer vector is
        posted (as the periodic timer does)."""
        if gen != vcpu.timer_gen:
            return
        vcpu.timer_deadline = deadline
        vcpu.stat["timer_fired"] += 1
        if vcpu.cpu is not None:
            vcpu.cpu.host_irq("timer")
        self.post(vcpu, arch.LOCAL_TIMER_VECTOR, "timer")

    def plan_entry(self, vcpu: "VcpuTdx") -> None:
        """tdx_vcpu_run planning, one-shot guests only: if this entry delivers the timer
        vector (or a timer was taken without a re-arm), the guest re-arms first."""
        guest = vcpu.guest
        if guest.rearm_due or (vcpu.seg_pi and arch.LOCAL_TIMER_VECTOR in vcpu.pi_src):
            if not guest.rearm_due:
                guest.rearm_planned = True
            guest.preempt_with_rearm()

    def kvm_set_lapic_tscdeadline_msr(self, vcpu: "VcpuTdx") -> None:
        """The guest's re-arm WRMSR(IA32_TSC_DEADLINE): start the hrtimer one period out.
        (Only the one-shot re-arm call arms it; the mix's representative WRMSR of the same
        MSR carries a placeholder value.)"""
        vcpu.stat["timer_armed"] += 1
        self._hrtimer_start(vcpu, vcpu.oneshot_period)

    # --- guest IPIs ----------------------------------------------------------------------
    def kvm_x2apic_icr_write(self, sender: "VcpuTdx", cpu: "HostCpu", icr: int) -> None:
        """KVM's emulation of the guest's x2APIC ICR write (kvm_x2apic_icr_write ->
        kvm_apic_send_ipi -> kvm_irq_delivery_to_apic -> __apic_accept_irq ->
        vmx_deliver_interrupt -> __vmx_deliver_posted_interrupt per destination)."""
        vm = sender.vm
        intr = vm.interrupts
        pattern = intr["ipi_pattern"]
        others = [v for v in vm.vcpus if v is not sender]
        if not others:
            return
        if pattern == "unicast":
            targets = [vm.ipi_rng.choice(others)]
        elif pattern == "multicast":
            targets = vm.ipi_rng.sample(others, min(intr["ipi_targets"], len(others)))
        elif pattern == "broadcast":
            targets = others
        else:
            n = intr["shootdown_targets"] or len(others)
            targets = vm.ipi_rng.sample(others, min(n, len(others))) if n < len(others) \
                else others
        vector = icr & 0xFF
        now = self.sim.env.now
        c_icr = self.sim.c_icr_write
        sstat = sender.stat
        sstat["ipi.sent"] += 1
        sstat["ipi.sent." + pattern] += 1
        if pattern == "shootdown":
            # receivers ack when they take the vector; register before posting (a running
            # receiver takes it inside pi_post)
            sd = Shootdown(sender, now, len(targets))
            for v in targets:
                v.sd_waiters.append(sd)
        for v in targets:
            cpu.acc += c_icr
            v.stat["ipi.received"] += 1
            self.post(v, vector, "ipi")

    def _ack_shootdowns(self, vcpu: "VcpuTdx", t: int) -> None:
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

    # --- NMIs ----------------------------------------------------------------------------
    def kvm_inject_nmi(self, vcpu: "VcpuTdx") -> None:
        """kvm_inject_nmi: nmi_queued++, KVM_REQ_NMI, kvm_vcpu_kick."""
        self.nmi_injected += 1
        vcpu.stat["nmi.injected"] += 1
        if vcpu.nmi_t0 is None:
            vcpu.nmi_t0 = self.sim.env.now
        vcpu.nmi_queued += 1
        vcpu.kvm_make_request(KVM_REQ_NMI)
        vcpu.kvm_vcpu_kick()
        if vcpu.phase == PH_BLOCKED:
            self.sim.invariants.record("stuck_halt", vcpu.cpu.index if vcpu.cpu else -1,
                                       vcpu.name, "NMI injected but the halted vCPU was "
                                       "not woken")

    def process_nmi(self, vcpu: "VcpuTdx", cpu: "HostCpu") -> None:
        """process_nmi (KVM_REQ_NMI) then, through KVM_REQ_EVENT's kvm_check_and_inject_events,
        tdx_inject_nmi: ++stat.nmi_injections, TDH.VP.WR(PEND_NMI, 1), nmi_pending = 0.

        Everything queued beyond one NMI is dropped (PEND_NMI is a single bit), as is a new
        NMI while PEND_NMI is still set (the module has not delivered the previous one)."""
        pending = vcpu.nmi_pending + vcpu.nmi_queued
        vcpu.nmi_queued = 0
        vcpu.requests |= KVM_REQ_EVENT
        if not pending:
            return
        dropped = pending - 1
        vcpu.stat["nmi_injections"] += 1
        if vcpu.module_fields.get("PEND_NMI", 0):
            dropped += 1
        self.sim.module.tdh_vp_wr(vcpu, cpu, "PEND_NMI", 1)
        vcpu.nmi_pending = 0
        if dropped:
            vcpu.stat["nmi.coalesced"] += dropped
            self.nmi_coalesced += dropped

    def deliver_nmi(self, vcpu: "VcpuTdx", t: int) -> None:
        """The module injects the pending NMI at TD entry `t`; the guest runs its handler."""
        vcpu.module_fields["PEND_NMI"] = 0
        self.nmi_delivered += 1
        vcpu.stat["nmi.delivered"] += 1
        vcpu.guest.irq_debt_ns += self.sim.c_guest_nmi
        t0 = vcpu.nmi_t0 if vcpu.nmi_t0 is not None else t
        vcpu.nmi_t0 = None
        vcpu.stat["irq.taken.nmi"] += 1
        vcpu.stat["irq.latency_ns_sum.nmi"] += t - t0
        self.sample("nmi", t0, t - t0, vcpu)
        if self.sim.tracer is not None:
            self.sim.tracer.emit(t, "nmi_delivered", vcpu.cpu.index, vcpu.name)

    def host_nmi(self, cpu: "HostCpu") -> None:
        """A host NMI on `cpu`: a TD running there exits with EXCEPTION_NMI (the host
        handler runs in tdx_vcpu_enter_exit); otherwise the host takes it in place."""
        self.sim.host_stat["host_nmi"] += 1
        v = cpu.curr
        if v is None or not v.is_vcpu or v.phase != PH_SEG:
            return
        now = self.sim.env.now
        if v.seg_status == arch.TDX_SUCCESS and v.t_enter <= now < v.t_guest_end:
            v.seg_host_nmi = True
            v.notify_host_irq("nmi")

    # --- processes -----------------------------------------------------------------------
    def _device_irqs(self, vm, rate_hz: float, targets: list):
        env = self.sim.env
        rng = stream(self.sim.seed, f"vm.{vm.name}.device_irq")
        mean = 1e9 / rate_hz
        i = 0
        while True:
            yield env.timeout(exp_ns(rng, mean))
            vcpu = targets[i % len(targets)]
            i += 1
            vcpu.stat["device_irq"] += 1
            self.post(vcpu, DEVICE_VECTOR, "device")

    def _tlb_flushes(self, vm, rate_hz: float):
        """kvm_flush_remote_tlbs -> kvm_make_all_cpus_request(KVM_REQ_TLB_FLUSH) from a host
        thread outside the model: every vCPU gets the request; vCPUs in guest mode are
        kicked (the requester's wait is not modelled); halted ones are not woken
        (KVM_REQUEST_NO_WAKEUP)."""
        env = self.sim.env
        rng = stream(self.sim.seed, f"vm.{vm.name}.tlb_flush")
        mean = 1e9 / rate_hz
        while True:
            yield env.timeout(exp_ns(rng, mean))
            for vcpu in vm.vcpus:
                vcpu.kvm_make_request(KVM_REQ_TLB_FLUSH)
                vcpu.stat["tlb_flush_requests"] += 1
                if vcpu.mode != OUTSIDE_GUEST_MODE:  # kvm_request_needs_ipi
                    vcpu.kvm_vcpu_kick()

    def _poisson(self, stream_name: str, rate_hz: float, fire, target):
        """A Poisson source at `rate_hz` on its own named stream, calling fire(target)."""
        env = self.sim.env
        rng = stream(self.sim.seed, stream_name)
        mean = 1e9 / rate_hz
        while True:
            yield env.timeout(exp_ns(rng, mean))
            fire(target)

    def _nmi_source(self, vcpu: "VcpuTdx", rate_hz: float):
        """VMM / watchdog NMIs injected into `vcpu` (kvm_inject_nmi)."""
        return self._poisson(f"vm.{vcpu.vm.name}.vcpu{vcpu.vcpu_id}.nmi", rate_hz,
                             self.kvm_inject_nmi, vcpu)

    def _host_nmis(self, cpu: "HostCpu", rate_hz: float):
        """Host NMIs on `cpu` (perf, watchdog)."""
        return self._poisson(f"host.cpu{cpu.index}.nmi", rate_hz, self.host_nmi, cpu)

    def start(self) -> None:
        """Start the configured interrupt sources (build phase)."""
        sim = self.sim
        env = sim.env
        for vm in sim.vms:
            intr = vm.interrupts
            if intr["device_irq_hz"] > 0:
                targets = [vm.vcpus[i] for i in intr["device_irq_vcpus"]]
                env.process(self._device_irqs(vm, intr["device_irq_hz"], targets))
            if intr["tlb_flush_hz"] > 0:
                env.process(self._tlb_flushes(vm, intr["tlb_flush_hz"]))
            if intr["nmi_hz"] > 0:
                for vcpu in vm.vcpus:
                    env.process(self._nmi_source(vcpu, intr["nmi_hz"]))
        host_nmi_hz = sim.scenario.data["host"]["nmi_hz"]
        if host_nmi_hz > 0:
            for cpu in sim.cpus:
                env.process(self._host_nmis(cpu, host_nmi_hz))

    # --- collect -------------------------------------------------------------------------
    def check_end(self) -> None:
        """End-of-run oracles: no vCPU halted with a deliverable event; NMI accounting."""
        outstanding = 0
        for vcpu in self.sim.vcpus:
            if vcpu.vm.flavor != "tdx":  # issue 3: VMX co-tenants have no TDX NMI state
                continue
            nmi_out = (vcpu.nmi_queued + vcpu.nmi_pending
                       + vcpu.module_fields.get("PEND_NMI", 0))
            outstanding += nmi_out
            irq = (vcpu.pi_on or vcpu.pir) and vcpu.tdx_interrupt_allowed()
            if vcpu.phase == PH_BLOCKED and (irq or nmi_out or vcpu.requests & KVM_REQ_NMI):
                self.sim.invariants.record("stuck_halt", vcpu.cpu.index, vcpu.name,
                                           "halted at the end of the run with a deliverable "
                                           "interrupt or NMI")
            if vcpu.oneshot_period:
                # a fired one-shot timer must be re-armed or on its way to be
                guest = vcpu.guest
                fired_unarmed = vcpu.stat["timer_fired"] - vcpu.stat["timer_armed"]
                if fired_unarmed > 1 or (fired_unarmed == 1 and not (
                        arch.LOCAL_TIMER_VECTOR in vcpu.pi_src or guest.rearm_due
                        or guest.rearm_planned or guest.kind == "tsc_deadline")):
                    self.sim.invariants.record("lost_interrupt", vcpu.cpu.index, vcpu.name,
                                               "one-shot timer fired but never re-armed")
        if self.nmi_injected != self.nmi_delivered + self.nmi_coalesced + outstanding:
            self.sim.invariants.record(
                "nmi_accounting", -1, None,
                f"{self.nmi_injected} NMIs injected but {self.nmi_delivered} delivered + "
                f"{self.nmi_coalesced} coalesced + {outstanding} outstanding")

    def collect(self, metrics: dict) -> None:
        """Latency percentiles as flat keys: all vCPUs (p50/p90/p99/max/count), and per vCPU
        (p50/p99/max under ``vm.<name>.vcpu.<i>.``)."""
        for key, samples in self.samples.items():
            for name, value in percentiles(samples).items():
                metrics[_prefix(key) + name] = value
        for (vcpu, key), samples in self.vcpu_samples.items():
            prefix = f"vm.{vcpu.vm.name}.vcpu.{vcpu.vcpu_id}." + _prefix(key)
            p = percentiles(samples)
            for name in ("p50", "p99", "max"):
                metrics[prefix + name] = p[name]


def _prefix(key: str) -> str:
    if key == "shootdown":
        return "ipi.shootdown_ns."
    if key == "wakeup":
        return "halt.wakeup_latency_ns."
    return f"irq.latency_ns.{key}."
