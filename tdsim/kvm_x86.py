"""Generic x86 KVM: the user-return MSR machinery and the per-vCPU run loop.

Mirrors arch/x86/kvm/x86.c: ``kvm_arch_vcpu_ioctl_run -> vcpu_run -> vcpu_enter_guest``, the
preempt notifiers (``kvm_sched_out``/``kvm_sched_in`` calling vcpu_put/vcpu_load), and
``kvm_set_user_return_msr`` / ``kvm_on_user_return``.  Vendor work (``tdx_*``) is in
`tdsim.kvm_tdx`, a subclass, as ``struct vcpu_tdx`` embeds ``struct kvm_vcpu``.

How time is spent: straight-line kernel work adds its cost to the CPU's accumulator
(``cpu.acc``) as plain function calls; the accumulated work, the TD entry, the guest's run and
the TD exit are then spent in ONE SimPy timeout, which ends at the next TD exit.  State changes
of straight-line work are applied when it is computed (a few hundred ns ahead of their exact
instant).  Anything that arrives during that timeout (a kick, a host interrupt, a reschedule)
is placed against the segment's landmarks -- the late exit-request check (``t_late``), VM
entry (``t_enter``), the guest's planned exit -- and handled as the kernel would at that
instant: before ``t_late`` it makes ``kvm_vcpu_exit_request`` abort the entry, after it the
interrupt is pending with IRQs off and the TD exits (at once, if not yet entered).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simpy import Interrupt

from . import arch
from .host import GUEST, KVM, VMM, SLEEPING, Thread, new_stat

if TYPE_CHECKING:
    from .host import HostCpu
    from .sim import Simulation

# vcpu->mode
OUTSIDE_GUEST_MODE, IN_GUEST_MODE, EXITING_GUEST_MODE = 0, 1, 2
# vcpu->arch.mp_state (uapi values)
KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_HALTED = 0, 3

# KVM_REQ_* bits used by the model
KVM_REQ_EVENT = 1 << 4
KVM_REQ_NMI = 1 << 6
KVM_REQ_TLB_FLUSH = 1 << 0
KVM_REQ_UNBLOCK = 1 << 11
# issue 3: requests whose processing ends the run (reference §1.3 A)
KVM_REQ_VM_DEAD = 1 << 1                 # KVM_REQ_VM_DEAD (| WAIT | NO_WAKEUP)
KVM_REQ_DIRTY_RING_SOFT_FULL = 1 << 3    # -> KVM_EXIT_DIRTY_RING_FULL
KVM_REQ_ABORT_MASK = KVM_REQ_VM_DEAD | KVM_REQ_DIRTY_RING_SOFT_FULL

# What the vCPU thread is doing, i.e. what an asynchronous notification can do to it.
PH_USER = 0      # VMM code in user mode (preemptible)
PH_KERNEL = 1    # KVM straight-line work (flags only; checked when the work ends)
PH_SEG = 2       # entry work + TD run (interruptible: late abort or TD exit)
PH_BLOCKED = 3   # halted in kvm_vcpu_block, scheduled out
PH_WAIT = 4      # runnable, waiting for a CPU
PH_POLL = 5      # halt-polling in kvm_vcpu_halt (issue 4; interruptible by a wake-up)
PH_STOPPED = 6   # issue 3: the VMM stopped the vCPU after a fatal exit (never runs again)

# Causes of an interrupt of the PH_SEG timeout
CAUSE_LATE_ABORT = "late_abort"
CAUSE_IRQ = "irq"
CAUSE_WAKE = "wake"  # a wake-up ends halt-polling (issue 4)

# issue 3: fatal userspace exits (the VMM stops the vCPU) and abort keys not in late_abort()
_FATAL_RUN_EXITS = frozenset({arch.KVM_EXIT_INTERNAL_ERROR, arch.KVM_EXIT_FAIL_ENTRY,
                              arch.KVM_EXIT_SHUTDOWN})
_ABORT_KEYS = {k: f"late_abort.{k}" for k in (
    "request_exit", "vm_dead", "mmu_reload_fail", "wait_for_sept_zap", "operand_busy", "tsc_rollback",
    "inconsistent_msr", "vcpu_associated", "sw_error", "zero_step", "failed_vmentry")}
_ABORT_KEYS["operand_busy_late"] = "late_abort.operand_busy"  # associated (tdsim.faults)

PUT_PREEMPT = "vcpu_put.cause.preempt"
PUT_KVM_RUN_RETURN = "vcpu_put.cause.kvm_run_return"
PUT_HALT = "vcpu_put.cause.halt"


class KvmUserReturnMsrs:
    """struct kvm_user_return_msrs of one CPU: per slot the ``host`` value and ``curr``,
    the value KVM *believes* is in the hardware; plus the notifier registration.

    Slots are keyed by MSR index (the kernel uses small slot numbers)."""

    __slots__ = ("cpu", "host", "curr", "registered", "sim")

    def __init__(self, sim: "Simulation", cpu: "HostCpu",
                 msrs=(arch.MSR_STAR, arch.MSR_LSTAR, arch.MSR_CSTAR, arch.MSR_SYSCALL_MASK,
                       arch.MSR_TSC_AUX)) -> None:
        """kvm_user_return_msr_cpu_online: read the host values from the hardware."""
        self.sim = sim
        self.cpu = cpu
        self.host = {m: cpu.msr[m] for m in msrs}
        self.curr = dict(self.host)
        self.registered = False

    def set(self, slot: int, value: int, site: str, mask: int = ~0) -> None:
        """kvm_set_user_return_msr: merge with host bits outside `mask`; WRMSR only if the
        cached value differs; register the notifier."""
        value = (value & mask) | (self.host[slot] & ~mask)
        if value == self.curr[slot]:
            return
        self.cpu.wrmsr(slot, value, site)
        self.curr[slot] = value
        self.registered = True

    def update_cache(self, slot: int, value: int) -> None:
        """kvm_user_return_msr_update_cache (v6.16): believe `value` is in the MSR, without
        writing it; register the notifier."""
        self.curr[slot] = value
        self.registered = True

    def on_user_return(self, site: str) -> None:
        """kvm_on_user_return: unregister; write back every host value the cache says is
        not in place."""
        self.registered = False
        host = self.host
        curr = self.curr
        for slot, value in host.items():
            if curr[slot] != value:
                self.cpu.wrmsr(slot, value, site)
                curr[slot] = value


class KvmX86:
    """kvm.ko-wide state of one host: the per-CPU user-return MSRs and the host-state
    strategy, and the return-to-user-mode path every host task goes through."""

    def __init__(self, sim: "Simulation", strategy) -> None:
        self.sim = sim
        self.strategy = strategy
        for cpu in sim.cpus:
            cpu.uret = KvmUserReturnMsrs(sim, cpu)

    def return_to_user(self, cpu: "HostCpu", task: Thread) -> None:
        """exit_to_user_mode on `cpu` for `task`: fire the user-return notifier if
        registered (TIF_USER_RETURN_NOTIFY follows the CPU), then check that host user code
        is about to run with host MSR values."""
        if cpu.uret.registered:
            self.strategy.user_return(cpu)
        self.sim.invariants.check_user_mode(cpu, task)


class KvmVcpu(Thread):
    """struct kvm_vcpu plus the VMM thread that runs it (KVM_RUN in a loop).

    Vendor hooks (implemented by `tdsim.kvm_tdx.VcpuTdx`): ``vcpu_load_vendor``,
    ``prepare_switch_to_guest``, ``vcpu_run_vendor`` (plan a segment), ``vcpu_exit_vendor``
    (complete it and handle the exit), ``vcpu_put_vendor``, ``has_events``,
    ``complete_userspace_io``, ``vmm_service_ns``."""

    is_vcpu = True
    category = KVM

    def __init__(self, sim: "Simulation", vm, index: int, pin: int | None) -> None:
        super().__init__(sim, f"{vm.name}.vcpu{index}", pin,
                         gsbase=0x7F5500000000 + (vm.index << 20) + index * 0x1000)
        self.vm = vm
        self.vcpu_id = index
        self.stat = new_stat()
        self.requests = 0
        self.mode = OUTSIDE_GUEST_MODE
        self.mp_state = KVM_MP_STATE_RUNNABLE
        self.cpu_index = -1          # vcpu->cpu
        self.guest_state_loaded = False  # vt->guest_state_loaded
        self.sigpending = False
        self.notify_resume = False   # issue 3: TIF_NOTIFY_RESUME (abort C(e))
        self.phase = PH_WAIT
        self.proc = None
        # landmarks of the current PH_SEG segment (absolute ns)
        self.t_seg0 = 0
        self.t_late = 0
        self.t_enter = 0
        self.t_guest_end = 0
        self.run_exit_reason = 0     # kvm_run->exit_reason of the last userspace exit
        self.vm_stopped = False      # issue 5: the VMM stopped the VM; never re-enter KVM_RUN
        self.t_wake = 0              # issue 4: when kvm_vcpu_wake_up last woke it
        # issue 4: TASK_INTERRUPTIBLE set in kvm_vcpu_block's final check, and a wake-up
        # that arrived after it but before schedule() (which then does not sleep)
        self.halting = False
        self.halt_woken = False
        # issue 4: event a KVM_REQ_OUTSIDE_GUEST_MODE kick-and-wait waits on (tdsim.sept);
        # succeeded when the vCPU next runs with IRQs enabled (late abort or after the exit)
        self.outside_ack = None
        self.seg_irq_why = "other"  # issue 4: what cut the current entry (irq_exits.<why>)

    # --- asynchronous notifications --------------------------------------------------------
    def exit_request_pending(self) -> bool:
        """kvm_vcpu_exit_request: kicked, a request bit, or transfer-to-guest work."""
        return (self.mode == EXITING_GUEST_MODE or self.requests != 0 or self.need_resched
                or self.sigpending or self.notify_resume)

    def notify_host_irq(self, why: str = "other") -> None:
        """A host interrupt reaches this vCPU's CPU now (tick, hrtimer, IPI)."""
        if self.phase != PH_SEG:
            return
        now = self.sim.env.now
        if now < self.t_late:
            # IRQs are still on: the host handles it in place; it matters only if it left
            # work that the late check sees.
            if self.exit_request_pending():
                self.phase = PH_KERNEL
                self.proc.interrupt(CAUSE_LATE_ABORT)
        elif now < self.t_guest_end:
            self.phase = PH_KERNEL
            self.seg_irq_why = why  # issue 4: source of the EXTERNAL_INTERRUPT exit
            self.proc.interrupt(CAUSE_IRQ)

    def resched(self) -> None:
        """need_resched was set (wake-up preemption or slice end) while this thread runs."""
        phase = self.phase
        if phase == PH_SEG:
            now = self.sim.env.now
            if now < self.t_late:
                self.phase = PH_KERNEL
                self.proc.interrupt(CAUSE_LATE_ABORT)
            elif now < self.t_guest_end:
                # the reschedule IPI / timer interrupt makes the TD exit
                self.phase = PH_KERNEL
                self.seg_irq_why = "resched"  # issue 4
                self.proc.interrupt(CAUSE_IRQ)
        elif phase == PH_USER or phase == PH_POLL:  # issue 4: polling stops on need_resched
            self.phase = PH_KERNEL
            self.proc.interrupt(CAUSE_IRQ)
        # PH_KERNEL: seen when the straight-line work ends.

    def kvm_vcpu_kick(self) -> None:
        """kvm_vcpu_kick: wake a blocked vCPU; a vCPU in guest mode is switched to
        EXITING_GUEST_MODE and sent an IPI (taken as a TD exit after the IPI latency)."""
        if self.phase == PH_BLOCKED or self.phase == PH_POLL or self.halting:
            self.kvm_vcpu_wake_up()
            return
        if self.phase == PH_SEG and self.sim.env.now >= self.t_late:
            if self.mode == IN_GUEST_MODE:
                self.mode = EXITING_GUEST_MODE
                self.stat["kicks"] += 1
                cpu = self.cpu
                ev = self.sim.env.timeout(self.sim.c_ipi)
                if self.sim.tracer is not None:  # the kick, then the IPI's arrival
                    self.sim.tracer.emit(self.sim.env.now, "kick", cpu.index, self.name,
                                         by=None)
                    ev.callbacks.append(lambda _e: self.sim.tracer.emit(
                        self.sim.env.now, "ipi", cpu.index, self.name, src_cpu=-1,
                        dst_cpu=cpu.index, why="kick"))
                ev.callbacks.append(lambda _e: cpu.host_irq("kick"))
        elif self.phase == PH_SEG:
            # issue 3, abort C(a): vcpu->mode = IN_GUEST_MODE is stored shortly before the
            # late check (reference §1.2 steps 5-7); a kick in that window wins the cmpxchg
            # and the late check sees EXITING_GUEST_MODE.  (Its IPI is taken in the IRQ
            # window the abort opens.)
            if (self.mode == IN_GUEST_MODE
                    and self.sim.env.now >= self.t_late - self.sim.c_in_guest_mode_window):
                self.mode = EXITING_GUEST_MODE
                self.stat["kicks"] += 1
            self.notify_host_irq()  # before the late check: it will see the request

    def kvm_make_request(self, req: int) -> None:
        self.requests |= req

    def kvm_vcpu_wake_up(self) -> None:
        """kvm_vcpu_wake_up: make a halted (blocked) vCPU thread runnable."""
        if self.phase == PH_BLOCKED and self.state == SLEEPING:
            self.stat["halt_wakeup"] += 1
            self.phase = PH_WAIT
            self.t_wake = self.sim.env.now
            self.sim.sched.wake_up(self)
        elif self.phase == PH_POLL:  # issue 4: the halt-polling loop sees the event
            self.phase = PH_KERNEL
            self.proc.interrupt(CAUSE_WAKE)
        elif self.halting and not self.halt_woken:
            # issue 4: between the final kvm_vcpu_check_block and schedule(): the task is
            # TASK_INTERRUPTIBLE, the wake-up makes it runnable again (no lost wake-up)
            self.stat["halt_wakeup"] += 1
            self.halt_woken = True
            self.t_wake = self.sim.env.now

    # --- vcpu_load / vcpu_put ----------------------------------------------------------------
    def vcpu_load(self, cpu: "HostCpu") -> None:
        """vcpu_load -> kvm_arch_vcpu_load -> vendor vcpu_load."""
        stat = self.stat
        stat["vcpu_load"] += 1
        cpu.acc += self.sim.c_vcpu_load
        cpu.loaded_vcpu = self
        self.vcpu_load_vendor(cpu)
        if self.sim.tracer is not None:
            self.sim.tracer.emit(self.sim.env.now, "vcpu_load", cpu.index, self.name,
                                 migrated=False)

    def vcpu_put(self, cpu: "HostCpu", cause_key: str) -> None:
        """vcpu_put -> kvm_arch_vcpu_put -> vendor vcpu_put (host-state restore)."""
        stat = self.stat
        stat["vcpu_put"] += 1
        stat[cause_key] += 1
        cpu.acc += self.sim.c_vcpu_put
        if self.sim.tracer is not None:
            self.sim.tracer.emit(self.sim.env.now, "vcpu_put", cpu.index, self.name,
                                 cause=cause_key[15:])
        self.vcpu_put_vendor(cpu)
        cpu.loaded_vcpu = None
        self.sim.invariants.check_after_put(cpu, self)

    # --- time ------------------------------------------------------------------------------
    def spend_kernel(self, cpu: "HostCpu"):
        """Spend the accumulated straight-line kernel work in one timeout (PH_KERNEL)."""
        work = cpu.acc
        if work:
            cpu.acc = 0
            self.phase = PH_KERNEL
            self.begin_seg(KVM, work)
            yield self.sim.env.timeout(work)
            self.end_seg(self.sim.env.now)

    def schedule_out(self, cpu: "HostCpu", runnable: bool, put_cause: str | None):
        """schedule() from KVM context: preempt notifier kvm_sched_out (vcpu_put), context
        switch, and on return kvm_sched_in (vcpu_load, possibly on another CPU)."""
        if put_cause is not None:
            self.vcpu_put(cpu, put_cause)
        yield from self.spend_kernel(cpu)
        if self.halt_woken:  # issue 4: woken after the final check: do not sleep
            runnable = True
        self.phase = PH_WAIT if runnable else PH_BLOCKED
        if self.sim.tracer is not None:
            self.sim.tracer.emit(self.sim.env.now, "vcpu_state", cpu.index, self.name,
                                 state="runnable" if runnable else "halted")
        self.sim.sched.switch_out(cpu, self, runnable)
        cpu = yield self.run_event
        if self.sim.tracer is not None:  # back where it was: KVM_RUN, or the VMM (no put)
            self.sim.tracer.emit(self.sim.env.now, "vcpu_state", cpu.index, self.name,
                                 state="running" if put_cause is not None else "userspace")
        if put_cause is not None:
            self.vcpu_load(cpu)
        return cpu

    # --- the thread ------------------------------------------------------------------------
    def main(self):
        """The VMM's vCPU thread: KVM_RUN, service the exit in userspace, repeat."""
        sim = self.sim
        if sim.tracer is not None:
            sim.tracer.emit(sim.env.now, "vcpu_state", -1, self.name, state="runnable")
        sim.sched.wake_up(self)
        cpu = yield self.run_event
        sim.kvm.return_to_user(cpu, self)
        while True:
            r = yield from self.kvm_arch_vcpu_ioctl_run(cpu)
            cpu = self.cpu
            if self.vmm_stops_vcpu(r):
                yield from self.vmm_stop(cpu)
                return
            yield from self.vmm_run(cpu)
            cpu = self.cpu

    def vmm_stops_vcpu(self, r: int) -> bool:
        """issue 3: what the VMM does after a fatal exit.  KVM_RUN failed (an errno other than
        EINTR) or reported KVM_EXIT_INTERNAL_ERROR / FAIL_ENTRY / SHUTDOWN: like QEMU, the VMM
        stops running this vCPU (it stays stopped until the end of the run)."""
        return (r < 0 and r != -arch.EINTR) or self.run_exit_reason in _FATAL_RUN_EXITS

    def vmm_stop(self, cpu: "HostCpu"):
        """The vCPU thread stops for good: it sleeps and nothing wakes it."""
        self.stat["vcpu_stopped"] += 1
        yield from self.spend_kernel(cpu)
        self.phase = PH_STOPPED
        self.sim.sched.switch_out(cpu, self, False)

    def kvm_arch_vcpu_ioctl_run(self, cpu: "HostCpu"):
        """kvm_arch_vcpu_ioctl_run: vcpu_load, complete_userspace_io, vcpu_run, vcpu_put,
        return to user mode (where the user-return notifier fires)."""
        sim = self.sim
        if sim.tracer is not None:
            sim.tracer.emit(sim.env.now, "vcpu_state", cpu.index, self.name, state="running")
        cpu.acc += sim.c_kvm_run_ioctl
        self.vcpu_load(cpu)
        # issue 5: a completion may return 0 (MapGPA's next chunk): straight back to the VMM
        r = self.complete_userspace_io(cpu)
        if r > 0:
            r = yield from self.vcpu_run(cpu)
        cpu = self.cpu
        self.vcpu_put(cpu, PUT_KVM_RUN_RETURN)
        stat = self.stat
        stat["userspace_exits"] += 1
        stat[sim.userspace_exit_keys[self.run_exit_reason]] += 1
        if sim.tracer is not None:
            sim.tracer.emit(sim.env.now, "userspace_exit", cpu.index, self.name,
                            reason=arch.KVM_EXIT_NAMES.get(self.run_exit_reason, "?"))
        sim.kvm.return_to_user(cpu, self)
        return r

    def vmm_run(self, cpu: "HostCpu"):
        """The userspace VMM services the exit (preemptible user code)."""
        sim = self.sim
        env = sim.env
        remaining = self.vmm_service_ns()
        if sim.tracer is not None:
            sim.tracer.emit(env.now, "vcpu_state", cpu.index, self.name, state="userspace")
        while True:
            work = cpu.acc
            cpu.acc = 0
            self.phase = PH_USER
            self.begin_seg(KVM, work, VMM, remaining)
            try:
                yield env.timeout(work + remaining)
                self.end_seg(env.now)
                self.phase = PH_KERNEL
                if self.vm_stopped:  # issue 5: the VMM stopped the VM (TDX fatal error)
                    sim.sched.switch_out(cpu, self, False)
                    yield self.run_event  # nothing wakes it: the thread stays parked
                return
            except Interrupt:
                ran = self.end_seg(env.now)
                remaining -= max(0, ran - work)
                cpu = yield from self.schedule_out(cpu, True, None)
                sim.kvm.return_to_user(cpu, self)

    def vcpu_run(self, cpu: "HostCpu"):
        """vcpu_run with vcpu_enter_guest inlined (one generator frame per KVM_RUN).

        Returns the value vcpu_run returns: 0 = exit to userspace, < 0 = error."""
        sim = self.sim
        env = sim.env
        stat = self.stat
        c_enter = sim.c_vcpu_enter_guest
        faults = sim.faults
        while True:
            if self.mp_state != KVM_MP_STATE_RUNNABLE:
                r = yield from self.vcpu_block(cpu)
                cpu = self.cpu
                if r <= 0:
                    return r
                continue
            # ---- vcpu_enter_guest -------------------------------------------------------
            if self.requests:
                r = self.kvm_check_requests(cpu)
                if r <= 0:
                    return r
            if faults.mmu_rng is not None and faults.mmu_reload_fails():
                # issue 3, abort B: kvm_mmu_reload failed; the error leaves KVM_RUN
                # (an NMI already written to PEND_NMI would stay committed).
                self.count_abort(cpu, "mmu_reload_fail")
                self.run_exit_reason = 0
                return -arch.ENOMEM
            if not self.guest_state_loaded:
                self.prepare_switch_to_guest(cpu)
            cpu.acc += c_enter
            late = cpu.acc
            if self.exit_request_pending():
                # Late abort (reference §1.3 C): state stays loaded, r = 1.
                r = self.late_abort(cpu, self.exit_request_kind())
                yield from self.spend_kernel(cpu)
            else:
                seg = self.vcpu_run_vendor(cpu, late)  # plans landmarks; total ns
                cpu.acc = 0
                now = env.now
                self.t_seg0 = now
                self.t_late = now + late
                self.phase = PH_SEG
                self.begin_seg(KVM, self.t_enter - now, GUEST, self.t_guest_end - self.t_enter)
                try:
                    yield env.timeout(seg)
                    self.end_seg(env.now)
                    irq = False
                except Interrupt as intr:
                    if intr.cause is CAUSE_LATE_ABORT:
                        wait = self.t_late - env.now
                        if wait > 0:
                            yield env.timeout(wait)
                        self.end_seg(env.now)
                        r = self.late_abort(cpu, self.exit_request_kind())
                        self.vcpu_run_cancel(cpu)
                        irq = None
                    else:
                        t_exit = max(env.now, self.t_enter)
                        self.seg_d2 = t_exit - self.t_enter
                        yield env.timeout(t_exit - env.now + sim.c_td_exit)
                        self.end_seg(env.now)
                        irq = True
                self.phase = PH_KERNEL
                if irq is not None:
                    self.mode = OUTSIDE_GUEST_MODE
                    r = self.vcpu_exit_vendor(cpu, irq)
            # ---- vcpu_run tail --------------------------------------------------------
            if r <= 0:
                return r
            if self.notify_resume:
                # issue 3: xfer_to_guest_mode_handle_work runs resume_user_mode_work
                self.notify_resume = False
                stat["notify_resume"] += 1
                cpu.acc += sim.c_notify_resume
            if self.need_resched or self.sigpending:
                if self.sigpending:
                    self.sigpending = False
                    self.run_exit_reason = arch.KVM_EXIT_INTR
                    return -4  # -EINTR
                stat["preempted"] += 1
                cpu = yield from self.schedule_out(cpu, True, PUT_PREEMPT)

    def exit_request_kind(self) -> str:
        if self.mode == EXITING_GUEST_MODE:
            return "kick"
        if self.requests:
            return "request"
        if self.sigpending:
            return "signal"
        if self.notify_resume:
            return "notify_resume"
        return "need_resched"

    def late_abort(self, cpu: "HostCpu", kind: str) -> int:
        """The late kvm_vcpu_exit_request() fired: IRQs back on, r = 1 (cancel_injection)."""
        self.mode = OUTSIDE_GUEST_MODE
        ack = self.outside_ack  # issue 4: the pending call-function IPI runs now
        if ack is not None:
            self.outside_ack = None
            ack.succeed()
        self.stat[f"late_abort.{kind}"] += 1
        self.stat["late_abort"] += 1
        if self.sim.tracer is not None:
            self.sim.tracer.emit(self.sim.env.now, "late_abort", cpu.index, self.name,
                                 abort=kind)
        return 1

    def vcpu_block(self, cpu: "HostCpu"):
        """kvm_vcpu_halt -> kvm_vcpu_block: sleep until kvm_vcpu_has_events.

        The check is repeated after the kernel work, right before scheduling out (the
        rcuwait loop's kvm_vcpu_check_block), so a wake-up in between is not lost."""
        if not self.has_events(cpu):
            yield from self.spend_kernel(cpu)
            poll_ns = self.sim.halt_poll_ns  # issue 4
            if poll_ns and not self.has_events(cpu):
                yield from self.halt_poll(cpu, poll_ns)
            self.halting = True  # issue 4: set_current_state(TASK_INTERRUPTIBLE)
            blocked = False
            while not self.has_events(cpu):  # issue 4: spurious wake-ups sleep again
                if blocked:
                    self.stat["halt.spurious_wakeup"] += 1
                    self.halting = True
                blocked = True
                self.stat["halt_block"] += 1
                t0 = self.sim.env.now
                cpu = yield from self.schedule_out(cpu, False, PUT_HALT)
                self.halting = self.halt_woken = False
                now = self.sim.env.now
                self.stat["halt_ns"] += now - t0
                # issue 4: wake-up latency (kvm_vcpu_wake_up -> running again)
                self.stat["halt.wakeup_latency_ns_sum"] += now - self.t_wake
                self.sim.irq.sample("wakeup", self.t_wake, now - self.t_wake, self)
            self.halting = False
        self.mp_state = KVM_MP_STATE_RUNNABLE
        return 1

    def halt_poll(self, cpu: "HostCpu", poll_ns: int):
        """kvm_vcpu_halt's polling loop (issue 4): spin up to `poll_ns` re-checking
        kvm_vcpu_check_block; a wake-up or need_resched ends it early.  Simplified: fixed
        halt_poll_ns (no grow/shrink), the check's cost is paid once at the end."""
        env = self.sim.env
        self.phase = PH_POLL
        self.begin_seg(KVM, poll_ns)
        t0 = env.now
        try:
            yield env.timeout(poll_ns)
            self.end_seg(env.now)
        except Interrupt:
            self.end_seg(env.now)
        self.phase = PH_KERNEL
        stat = self.stat
        stat["halt.poll_ns"] += env.now - t0
        if self.has_events(cpu):
            stat["halt_poll_success"] += 1
        else:
            stat["halt_poll_fail"] += 1

    def kvm_check_requests(self, cpu: "HostCpu") -> int:
        """Request processing at the top of vcpu_enter_guest (reference §1.2 step 1).

        issue 3, abort A: KVM_REQ_VM_DEAD ends the run with -EIO; the dirty ring's soft
        limit (KVM_REQ_DIRTY_RING_SOFT_FULL) exits to userspace with KVM_EXIT_DIRTY_RING_FULL
        (the VMM harvests the ring and re-enters)."""
        requests = self.requests
        self.requests = 0
        if requests & KVM_REQ_ABORT_MASK:
            if requests & KVM_REQ_VM_DEAD:
                self.count_abort(cpu, "vm_dead")
                self.run_exit_reason = 0
                return -arch.EIO
            self.count_abort(cpu, "request_exit")
            self.run_exit_reason = arch.KVM_EXIT_DIRTY_RING_FULL
            return 0
        return 1

    def count_abort(self, cpu: "HostCpu", kind: str) -> None:
        """issue 3: count an entry abort that is not the late exit-request check."""
        stat = self.stat
        key = _ABORT_KEYS[kind]
        stat[key] += 1
        stat["late_abort"] += 1
        if self.sim.tracer is not None:
            self.sim.tracer.emit(self.sim.env.now, "late_abort", cpu.index, self.name,
                                 abort=key[11:])
