"""Where simulated time passes for a vCPU thread, and what can cut it short.

KVM's run loop is straight-line kernel code between a few points where time really passes:
the guest's run (from the late exit-request check to the next VM exit), the VMM's user code,
halt-polling, a block.  tdsim runs the kernel functions as plain calls that add their cost to
the CPU's accumulator (``cpu.acc``), and spends the accumulated work together with the next
stretch of real concurrency in ONE SimPy timeout: a *segment*.  A TD-entry segment covers the
kernel work still pending (the previous exit's handling and this entry's preparation), the
SEAMCALL, the guest's run and the TD exit, with three landmarks:

* ``t_late``      the late ``kvm_vcpu_exit_request()`` check in ``vcpu_enter_guest``;
* ``t_enter``     VM entry (the TD starts running);
* ``t_guest_end`` the guest's planned exit (its TDVMCALL).

State changes of straight-line work are applied when the work is computed, a few hundred ns
ahead of their exact instant.  The kernel functions after the late check (``tdx_vcpu_run``
up to the SEAMCALL) are computed at the segment's start too, but they keep what they decide
in the segment (``seg_*`` fields) until the TD entry is certain.

`VcpuSegment.disturb` is the one interface through which anything reaches a vCPU thread, with a
cause object (`tdsim.host.HostIrq`, `RESCHED`, `EXIT_REQUEST`, `WAKE`), and the one place
that decides what the disturbance does, by the thread's phase and the landmarks:

* before ``t_late`` the late check is still ahead: if ``kvm_vcpu_exit_request()`` is now true
  (the only abort decision, made by the kernel's own predicate), the segment is cut at
  ``t_late`` -- the entry is rolled back (nothing after the check happened) and KVM takes the
  late-abort path;
* between ``t_late`` and ``t_guest_end`` a host interrupt (or need_resched's IPI) is pending
  with IRQs off: the TD exits at once (at ``t_enter`` if not yet entered) with
  EXTERNAL_INTERRUPT (EXCEPTION_NMI for a host NMI);
* in the VMM's user code or while halt-polling, need_resched preempts, and a wake-up ends
  the polling.

The phase and the landmarks are set only here and by the run loop (`tdsim.kvm_x86`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, ClassVar

from simpy import Interrupt, Timeout

from .host import GUEST, HOST_IRQ, KVM, RESCHED, Cause, HostIrq, ProcessGenerator, Thread
from .oracles import NEED_RESCHED

if TYPE_CHECKING:
    from .host import HostCpu

# What the vCPU thread is doing, i.e. what a disturbance can do to it.
PH_USER = 0      # VMM code in user mode (preemptible)
PH_KERNEL = 1    # KVM straight-line work (flags only; checked when the work ends)
PH_SEG = 2       # an entry segment: entry work + TD run (late abort or TD exit)
PH_BLOCKED = 3   # halted in kvm_vcpu_block, scheduled out
PH_WAIT = 4      # runnable, waiting for a CPU
PH_POLL = 5      # halt-polling in kvm_vcpu_halt (ended by a wake-up or need_resched)
PH_STOPPED = 6   # the VMM stopped the vCPU after a fatal exit (never runs again)

EXIT_REQUEST = Cause("exit_request")  # something kvm_vcpu_exit_request() reads has changed
WAKE = Cause("wake")                  # kvm_vcpu_wake_up of a halt-polling vCPU
LATE_CHECK = Cause("late_check")      # interrupt cause: the late check fires after all


class LateCheckFired(Exception):
    """Raised out of an entry segment cut at ``t_late``: ``vcpu_enter_guest`` takes the
    late-abort path as if its check had seen the request (the time is already ``t_late``)."""


class VcpuSegment(Thread):
    """The simulation side of a vCPU thread: its phase, the current segment's landmarks, and
    `disturb`.  `tdsim.kvm_x86.KvmVcpu` (struct kvm_vcpu) derives from it."""

    is_vcpu = True
    category = KVM

    # provided by KvmVcpu: the mode, and the kernel's predicate the late check evaluates
    # (a ClassVar: a method of the subclass, not an instance attribute, for mypyc)
    mode: int
    kvm_vcpu_exit_request: ClassVar[Callable[[VcpuSegment], bool]]

    def init_segment(self) -> None:
        self.phase = PH_WAIT
        self.t_seg0 = 0       # start of the current entry segment
        self.t_late = 0       # the late exit-request check
        self.t_enter = 0      # VM entry
        self.t_guest_end = 0  # the guest's planned exit
        self.seg_ran = 0      # guest time that ran before a cut (the rest is still to run)
        self.seg_cut: HostIrq | None = None  # what cut the last entry segment short
        # (oracle bookkeeping, tdsim.oracles) what kvm_vcpu_exit_request() reads that became
        # pending, and when: {part: (t_ns, label)}
        self.exit_work: dict[str, tuple[int, str]] = {}

    # --- the one interface ------------------------------------------------------------------
    def disturb(self, cause: Cause) -> None:
        """Something reaches this vCPU thread now; see the module docstring."""
        if cause is RESCHED:  # (the scheduler has just set need_resched)
            self.raise_exit_work(NEED_RESCHED, "need_resched")
        phase = self.phase
        if phase == PH_SEG:
            now = self.env.now
            if now < self.t_late:
                if self.kvm_vcpu_exit_request():
                    self.phase = PH_KERNEL
                    self._interrupt(LATE_CHECK)
            elif now < self.t_guest_end:
                if cause is RESCHED:
                    cause = HOST_IRQ["resched"]  # the reschedule IPI
                elif not isinstance(cause, HostIrq):
                    return
                if cause.nmi and not (self.seg_guest_runs() and self.t_enter <= now):
                    return  # a host NMI outside the guest is handled in place
                self.phase = PH_KERNEL
                self.seg_cut = cause
                self._interrupt(cause)
        elif (phase == PH_USER and cause is RESCHED) or (
                phase == PH_POLL and (cause is RESCHED or cause is WAKE)):
            self.phase = PH_KERNEL
            self._interrupt(cause)

    def raise_exit_work(self, part: str, label: str) -> None:
        """(Oracle bookkeeping, `tdsim.oracles`) `part` of what kvm_vcpu_exit_request()
        reads has just become pending (`label` says what): remember when, and trace it."""
        now = self.env._now
        self.exit_work[part] = (now, label)
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(now, "exit_request", self.cpu.index, self.name, part=part, what=label)

    def seg_guest_runs(self) -> bool:
        """The current segment enters the guest (not refused, not an injected exit)."""
        return True

    def _interrupt(self, cause: Cause) -> None:
        proc = self.proc
        assert proc is not None
        proc.interrupt(cause)

    # --- segments -----------------------------------------------------------------------------
    def begin_entry(self, cpu: HostCpu, guest_ns: int, exit_ns: int) -> Timeout:
        """Start an entry segment: the work accumulated on `cpu` (up to VM entry), then
        ``guest_ns`` of guest run and ``exit_ns`` of exit (``guest_ns = 0``: the entry is
        refused, or the TD exits at once).  Returns the one timeout to wait for; then
        `end_entry`, or `cut_entry` if the wait was interrupted."""
        now = self.env._now  # (tdsim.clock: integer ns)
        work = cpu.acc
        cpu.acc = 0
        self.t_enter = t_enter = now + work
        self.t_guest_end = t_enter + guest_ns
        self.seg_cut = None
        self.phase = PH_SEG
        # time accounting: [KVM: the work][GUEST: the run][KVM: the exit] (Thread.begin_seg)
        self.seg_t0 = now
        self.seg_k1 = KVM
        self.seg_d1 = work
        self.seg_k2 = GUEST
        self.seg_d2 = guest_ns
        return self.timeout(work + guest_ns + exit_ns)

    def end_entry(self) -> None:
        """The entry segment ran to its planned end: the guest ran all of its part."""
        ran = self.seg_d2
        self.seg_ran = ran
        self.phase = PH_KERNEL
        tracer = self.tracer
        if tracer is not None:
            self.end_seg(self.env._now)  # (which traces the segment's parts)
            return
        if self.seg_k2 != GUEST:
            self.end_seg(self.env._now)  # a segment split at the warm-up
            return
        # Thread.end_seg for an unsplit entry segment: KVM, the guest's run, KVM
        ns = self.cpu.ns
        ns[KVM] += self.env._now - self.seg_t0 - ran
        ns[GUEST] += ran
        self.seg_t0 = -1

    def cut_entry(self, cause: Cause, cut_exit_ns: int) -> ProcessGenerator:
        """The entry segment was interrupted by `cause` (see `disturb`): at the late check,
        roll the entry back (`LateCheckFired` once the check's instant is reached); in the
        guest, exit at once (at VM entry if not yet entered), the exit taking
        ``cut_exit_ns``.  Returns the cause that cut the guest's run."""
        env = self.env
        if cause is LATE_CHECK:
            wait = self.t_late - env.now
            if wait > 0:
                yield env.timeout(wait)
            self.end_seg(env.now)
            raise LateCheckFired()
        t_enter = self.t_enter
        t_exit = max(env.now, t_enter)
        # the guest ran up to the exit; what follows is KVM time (time accounting too)
        self.seg_ran = self.seg_d2 = t_exit - t_enter
        yield env.timeout(t_exit - env.now + cut_exit_ns)
        self.end_seg(env.now)
        return self.seg_cut

    def run_entry(self, cpu: HostCpu, guest_ns: int, exit_ns: int,
                  cut_exit_ns: int) -> ProcessGenerator:
        """`begin_entry`, the wait, then `end_entry` or `cut_entry`: returns the cause that
        cut the guest's run short, or None."""
        ev = self.begin_entry(cpu, guest_ns, exit_ns)
        try:
            yield ev
        except Interrupt as intr:
            cause: Any = intr.cause  # (a Cause)
            return (yield from self.cut_entry(cause, cut_exit_ns))
        self.end_entry()
        return None

    def spend_kernel(self, cpu: HostCpu) -> ProcessGenerator:
        """Spend the accumulated straight-line kernel work in one timeout (not disturbed)."""
        work = cpu.acc
        if work:
            cpu.acc = 0
            self.phase = PH_KERNEL
            self.begin_seg(KVM, work)
            yield self.env.timeout(work)
            self.end_seg(self.env.now)

    def run_user(self, cpu: HostCpu, category: int, ns: int) -> ProcessGenerator:
        """The pending kernel work, then ``ns`` of preemptible user code (the VMM).  Returns
        None when it ran to the end, else (need_resched preempted it) the time still to run."""
        env = self.env
        work = cpu.acc
        cpu.acc = 0
        self.phase = PH_USER
        self.begin_seg(KVM, work, category, ns)
        try:
            yield env.timeout(work + ns)
            self.end_seg(env.now)
            self.phase = PH_KERNEL
            return None
        except Interrupt:
            ran = self.end_seg(env.now)
            return ns - max(0, ran - work)

    def run_poll(self, poll_ns: int) -> ProcessGenerator:
        """Halt-polling for up to ``poll_ns``; a wake-up or need_resched ends it early."""
        env = self.env
        self.phase = PH_POLL
        self.begin_seg(KVM, poll_ns)
        with suppress(Interrupt):
            yield env.timeout(poll_ns)
        self.end_seg(env.now)
        self.phase = PH_KERNEL
