"""Host CPUs, threads and the scheduler.

`HostCpu` is the hardware: the real contents of the MSRs that matter, per logical CPU.  KVM's
beliefs about those MSRs (the user-return cache, `tdsim.kvm_x86.KvmUserReturnMsrs`) live in a
separate object that KVM attaches when the CPU comes online, so that a belief that disagrees
with the hardware can be seen.

Every RDMSR/WRMSR goes through `HostCpu.rdmsr` / `HostCpu.wrmsr`, which charge the cost to the
CPU's accumulator (`acc`, straight-line work not yet spent in a SimPy timeout) and count it by
MSR and by call site.

The scheduler is a small model of the Linux one: per-CPU FIFO run queues, a time slice when a
CPU is contended, optional wake-up preemption, pinning, wake-up placement on an idle CPU, and
idle balancing (a CPU that goes idle pulls an unpinned runnable thread from another CPU, which
is how unpinned vCPU threads migrate).  Idle CPUs and CPUs with pullable threads are kept in
sorted index lists, so placement and pulling do not scan every CPU.  Context switches save the
outgoing task's GS base from the hardware (``save_fsgs``) and load the incoming task's, as
``__switch_to`` does; a task whose saved GS base is not its own has had host state leak into it.

Asynchronous notifications reach a thread through `Thread.disturb` with a cause object: a host
interrupt on its CPU (`HostIrq`), or need_resched (`RESCHED`).  What a disturbance does to a
vCPU thread is decided in one place, `tdsim.segment.VcpuSegment.disturb`.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right, insort
from collections import defaultdict, deque
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from simpy import Event, Interrupt, Process

from . import arch
from .rng import exp_ns

if TYPE_CHECKING:
    import random

    from .clock import Environment
    from .findings import Findings
    from .trace import Tracer

# CPU time categories (cpu.<i>.ns.<name>)
GUEST, KVM, VMM, HOST_TASK, IDLE = range(5)
CATEGORY_NAMES = ("guest", "kvm", "vmm", "host_task", "idle")

# Thread states
RUNNING, RUNNABLE, SLEEPING = range(3)

# wrmsr call sites (metric keys precomputed: no string building in the hot path)
SITE_PREPARE = "wrmsr.site.prepare"
SITE_PUT = "wrmsr.site.put"
SITE_USER_RETURN = "wrmsr.site.user_return"
SITE_POST_EXIT = "wrmsr.site.post_exit"
SITE_VCPU_RUN = "wrmsr.site.vcpu_run"  # tdx_vcpu_run's restores after every TDH.VP.ENTER
_WRMSR_MSR_KEYS = {msr: f"wrmsr.msr.{name}" for msr, name in arch.MSR_NAMES.items()}
_RDMSR_MSR_KEYS = {msr: f"rdmsr.msr.{name}" for msr, name in arch.MSR_NAMES.items()}

Stat = defaultdict[str, int]
ProcessGenerator = Generator[Event, Any, Any]


def new_stat() -> Stat:
    """A counter table (metric name -> count) of one thread or of the host."""
    return defaultdict(int)


class Cause:
    """What disturbs a thread (the argument of `Thread.disturb`, and the cause of the SimPy
    interrupt that cuts its current stretch of time short)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class HostIrq(Cause):
    """A host interrupt arriving on the thread's CPU: `name` is its source (tick, timer,
    kick, resched, flush_ipi, other) and `vector` the host vector it arrives on; `nmi` for a
    host NMI."""

    __slots__ = ("nmi", "vector")

    def __init__(self, name: str, vector: int, nmi: bool = False) -> None:
        super().__init__(name)
        self.vector = vector
        self.nmi = nmi


# One cause object per source, so a disturbance allocates nothing.  The tick and the hrtimer
# are the local APIC timer; a kick is smp_send_reschedule; the TDH.VP.FLUSH IPI is
# smp_call_function_single; pi_wakeup is the IOMMU's notification on the wake-up vector.
HOST_IRQ = {name: HostIrq(name, vector) for name, vector in (
    ("tick", arch.LOCAL_TIMER_VECTOR), ("timer", arch.LOCAL_TIMER_VECTOR),
    ("kick", arch.RESCHEDULE_VECTOR), ("resched", arch.RESCHEDULE_VECTOR),
    ("flush_ipi", arch.CALL_FUNCTION_SINGLE_VECTOR), ("other", arch.HOST_DEVICE_VECTOR),
    ("pi_wakeup", arch.POSTED_INTR_WAKEUP_VECTOR))}
HOST_NMI = HostIrq("nmi", arch.NMI_VECTOR, nmi=True)
RESCHED = Cause("need_resched")  # need_resched was set while the thread runs


class HostXstate:
    """The host's values of the state a TD exit may leave changed besides the user-return
    MSRs (``[host]`` debugctl, xcr0, xss, pkru): IA32_DEBUGCTL, XCR0, IA32_XSS and the VMM
    threads' PKRU (every host thread in the model uses the same PKRU)."""

    __slots__ = ("debugctl", "xcr0", "xss", "pkru")

    def __init__(self, debugctl: int, xcr0: int, xss: int, pkru: int) -> None:
        self.debugctl = debugctl
        self.xcr0 = xcr0
        self.xss = xss
        self.pkru = pkru


class UserGsBaseChanges:
    """``[host] gs_base_change_hz``: a thread's user code changes its GS base (thread-local
    storage set up again, a runtime that uses GS), by ``arch_prctl`` (the syscall: hardware
    and thread.gsbase agree) or ``wrgsbase`` (FSGSBASE, user mode: thread.gsbase is stale
    until the next save_fsgs).  Threads: the VMM's vCPU threads and the host tasks.

    Simplified: a change can happen only as user code starts (a vCPU thread's VMM servicing
    an exit, a host task's burst), with probability 1 - exp(-rate x its user time), at the
    start; one random stream per thread.  The n-th change of a thread sets its base to its
    first base plus n x 64 KiB (a canonical user address)."""

    __slots__ = ("rng", "rate_per_ns", "via", "stat", "tracer")

    def __init__(self, rng: random.Random, hz: float, via: str, stat: Stat,
                 tracer: Tracer | None) -> None:
        self.rng = rng
        self.rate_per_ns = hz / 1e9
        self.via = via
        self.stat = stat
        self.tracer = tracer

    def in_user_mode(self, task: Thread, cpu: HostCpu, user_ns: int) -> None:
        """`task` runs user code on `cpu` for `user_ns`: maybe change its GS base now."""
        if self.rng.random() >= -math.expm1(-self.rate_per_ns * user_ns):
            return
        self.stat["gs_base_changes"] += 1
        value = task.user_gsbase + 0x10000
        if self.via == "arch_prctl":
            task.do_arch_prctl_64(cpu, value)
        else:
            task.wrgsbase(cpu, value)
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(cpu.env.now, "gs_base", cpu.index, task.name, value=hex(value),
                        via=self.via)


class HostCpu:
    """One host logical CPU: hardware MSR contents, what runs on it, its run queue, its time."""

    __slots__ = (
        "env", "index", "name", "msr", "xcr0", "pkru", "host_xstate", "uret", "curr", "rq",
        "ns", "idle_since", "acc", "stat", "slice_gen", "c_wrmsr", "c_rdmsr", "c_xsetbv",
        "c_wrpkru", "tracer", "user_return", "unpinned_queued", "active",
        "online",
    )

    def __init__(self, env: Environment, index: int, c_wrmsr: int, c_rdmsr: int,
                 tracer: Tracer | None, host_stat: Stat, xstate: HostXstate | None = None,
                 c_xsetbv: int = 0, c_wrpkru: int = 0) -> None:
        self.env = env
        self.index = index
        self.name = f"host.cpu{index}"
        xs = xstate if xstate is not None else HostXstate(0, 0, 0, 0)
        self.host_xstate = xs
        # The hardware truth.  KERNEL_GS_BASE holds the running task's user GS base.
        self.msr: dict[int, int] = {}
        self.xcr0 = 0  # XCR0 (XSETBV), not an MSR
        self.cpu_init()
        self.pkru = xs.pkru   # PKRU (WRPKRU), the running thread's; not an MSR
        # KVM's user-return MSR state of this CPU (tdsim.kvm_x86.KvmUserReturnMsrs), attached
        # by KVM when the CPU comes online; the hardware layer does not look inside it.
        self.uret: Any = None
        # exit_to_user_mode's notifier chain, installed by KVM (user-return notifier + checks)
        self.user_return: Callable[[HostCpu, Thread], None] | None = None
        self.curr: Thread | None = None
        self.rq: deque[Thread] = deque()
        self.unpinned_queued = 0  # threads in rq that idle balancing may pull
        # cpu_active(): the scheduler may place threads here (false from the start of a
        # hot-unplug); cpu_online(): IPIs reach it (false once the teardown has run)
        self.active = True
        self.online = True
        self.ns = [0, 0, 0, 0, 0]
        self.idle_since = 0
        self.acc = 0
        self.stat = host_stat  # the running thread's counters (the host's when idle)
        self.slice_gen = 0
        self.c_wrmsr = c_wrmsr
        self.c_rdmsr = c_rdmsr
        self.c_xsetbv = c_xsetbv
        self.c_wrpkru = c_wrpkru
        self.tracer = tracer

    def cpu_init(self) -> None:
        """The host state a CPU starts with, at boot and when it comes back after a
        hot-unplug, before any callback runs (start_secondary:
        cpu_init's syscall_init, setup_getcpu's TSC_AUX, the FPU's XCR0 and IA32_XSS, perf's
        DEBUGCTL): the host's own values, whatever the CPU held when it went down.

        Simplified: one assignment of the values the CPU booted with."""
        xs = self.host_xstate
        msr = self.msr
        msr[arch.MSR_STAR] = arch.HOST_STAR
        msr[arch.MSR_LSTAR] = arch.HOST_LSTAR
        msr[arch.MSR_CSTAR] = 0
        msr[arch.MSR_SYSCALL_MASK] = arch.HOST_SYSCALL_MASK
        msr[arch.MSR_TSC_AUX] = arch.host_tsc_aux(self.index)
        msr[arch.MSR_KERNEL_GS_BASE] = 0  # (the next task's is loaded when it runs)
        msr[arch.MSR_IA32_DEBUGCTLMSR] = xs.debugctl
        msr[arch.MSR_IA32_XSS] = xs.xss
        self.xcr0 = xs.xcr0

    def wrmsr(self, msr: int, value: int, site: str) -> None:
        """WRMSR on this CPU: the one place that writes hardware MSRs, charges and counts."""
        self.msr[msr] = value
        self.acc += self.c_wrmsr
        stat = self.stat
        stat[_WRMSR_MSR_KEYS[msr]] += 1
        stat[site] += 1
        tracer = self.tracer
        if tracer is not None:
            cur = self.curr
            tracer.emit(self.env.now, "wrmsr", self.index, cur.name if cur else None,
                        msr=arch.MSR_NAMES[msr], site=site[11:], value=hex(value))

    def rdmsr(self, msr: int) -> int:
        """RDMSR on this CPU: charges and counts."""
        self.acc += self.c_rdmsr
        self.stat[_RDMSR_MSR_KEYS[msr]] += 1
        return self.msr[msr]

    def xsetbv(self, value: int) -> None:
        """XSETBV of XCR0 on this CPU: charges and counts."""
        self.xcr0 = value
        self.acc += self.c_xsetbv
        self.stat["xsetbv"] += 1

    def wrpkru(self, value: int) -> None:
        """WRPKRU on this CPU: charges and counts."""
        self.pkru = value
        self.acc += self.c_wrpkru
        self.stat["wrpkru"] += 1

    def host_irq(self, cause: HostIrq) -> None:
        """A host interrupt (tick, hrtimer, IPI) arrives on this CPU now."""
        curr = self.curr
        if curr is not None:
            curr.disturb(cause)

    def exit_to_user_mode(self, task: Thread) -> None:
        """exit_to_user_mode for `task` on this CPU: the user-return notifier chain runs."""
        hook = self.user_return
        if hook is not None:
            hook(self, task)


class Thread:
    """A host thread: a vCPU thread of the VMM or another host task."""

    is_vcpu = False
    category = HOST_TASK  # CPU time category of its kernel-side work

    def __init__(self, env: Environment, name: str, pin: int | None, gsbase: int,
                 stat: Stat, tracer: Tracer | None, cpu: HostCpu) -> None:
        self.env = env
        self.timeout = env.timeout  # (SimPy's descriptor resolved once)
        self.name = name
        self.pin = pin
        # current->thread.gsbase: the task's user GS base as last saved in its thread_struct
        # (save_fsgs at a context switch, current_save_fsgs, ARCH_SET_GS); stale after a
        # user-mode WRGSBASE until the next save
        self.gsbase = gsbase
        # the GS base the task's user code last set: what it must find on return to user
        # mode (tdsim's reference for the checks; the kernel has no such copy)
        self.user_gsbase = gsbase
        self.state = SLEEPING
        self.cpu = cpu  # the CPU it runs on or last ran on (where it is first placed)
        self.need_resched = False
        self.stat = stat
        self.tracer = tracer
        self.proc: Process | None = None
        # time accounting of the stretch running now: [seg_k1: seg_d1][seg_k2: seg_d2][KVM]
        self.seg_t0 = -1
        self.seg_k1 = HOST_TASK
        self.seg_d1 = 0
        self.seg_k2 = HOST_TASK
        self.seg_d2 = 0
        self.run_event: Event = env.event()

    # --- the task's user GS base -----------------------------------------------------------
    def do_arch_prctl_64(self, cpu: HostCpu, value: int) -> None:
        """do_arch_prctl_64(ARCH_SET_GS, value) for the current task on `cpu`: the inactive GS base
        (KERNEL_GS_BASE while in the kernel) and thread.gsbase are written together.

        Simplified: no selector load, no -EPERM check; the syscall's time is the VMM's."""
        cpu.msr[arch.MSR_KERNEL_GS_BASE] = value
        self.gsbase = value
        self.user_gsbase = value

    def wrgsbase(self, cpu: HostCpu, value: int) -> None:
        """WRGSBASE in user mode (CR4.FSGSBASE): the hardware GS base changes, thread.gsbase
        does not until the next save_fsgs.  The hardware base is kept in the KERNEL_GS_BASE
        slot, where it sits once the task enters the kernel (tdsim does not model SWAPGS)."""
        cpu.msr[arch.MSR_KERNEL_GS_BASE] = value
        self.user_gsbase = value

    def current_save_fsgs(self, cpu: HostCpu) -> None:
        """current_save_fsgs(): save_fsgs for the running task -- thread.gsbase read back
        from the hardware (FSGSBASE: __rdgsbase_inactive).  Simplified: GS base only."""
        self.gsbase = cpu.msr[arch.MSR_KERNEL_GS_BASE]

    # --- time accounting ------------------------------------------------------------------
    def begin_seg(self, k1: int, d1: int, k2: int = KVM, d2: int = 0) -> None:
        """Start a timed stretch on the CPU: d1 ns of k1, then d2 ns of k2, then KVM."""
        self.seg_t0 = self.env._now
        self.seg_k1 = k1
        self.seg_d1 = d1
        self.seg_k2 = k2
        self.seg_d2 = d2

    def end_seg(self, t: int) -> int:
        """Account the running stretch up to time t; returns the elapsed ns."""
        elapsed = t - self.seg_t0
        tracer = self.tracer
        if tracer is not None:
            self.trace_seg(tracer, elapsed)
        self.seg_t0 = -1
        ns = self.cpu.ns
        d1 = self.seg_d1
        if elapsed <= d1:
            ns[self.seg_k1] += elapsed
            return elapsed
        ns[self.seg_k1] += d1
        rest = elapsed - d1
        d2 = self.seg_d2
        if rest <= d2:
            ns[self.seg_k2] += rest
        else:
            ns[self.seg_k2] += d2
            ns[KVM] += rest - d2
        return elapsed

    def trace_seg(self, tracer: Tracer, elapsed: int) -> None:
        """Emit ``cpu_state`` for each part of the stretch that ran (up to three: k1, k2,
        KVM), at the instant the part began (so these events are emitted after the fact)."""
        t0 = self.seg_t0
        cpu = self.cpu.index
        name = self.name
        d1 = self.seg_d1
        if elapsed > 0 and d1 > 0:
            tracer.emit(t0, "cpu_state", cpu, name, what=CATEGORY_NAMES[self.seg_k1],
                        thread=name)
        if elapsed > d1 and self.seg_d2 > 0:
            tracer.emit(t0 + d1, "cpu_state", cpu, name, what=CATEGORY_NAMES[self.seg_k2],
                        thread=name)
        if elapsed > d1 + self.seg_d2:
            tracer.emit(t0 + d1 + self.seg_d2, "cpu_state", cpu, name,
                        what=CATEGORY_NAMES[KVM], thread=name)

    def split_seg(self, t: int) -> None:
        """Account the running stretch up to `t` and keep its remainder open (warm-up)."""
        elapsed = t - self.seg_t0
        k1, d1, k2, d2 = self.seg_k1, self.seg_d1, self.seg_k2, self.seg_d2
        self.end_seg(t)
        if elapsed <= d1:
            self.begin_seg(k1, d1 - elapsed, k2, d2)
        elif elapsed <= d1 + d2:
            self.begin_seg(k2, d1 + d2 - elapsed, KVM, 0)
        else:
            self.begin_seg(KVM, 0, KVM, 0)

    # --- asynchronous notifications -------------------------------------------------------
    def disturb(self, cause: Cause) -> None:
        """Something happened to this running thread (see `Cause`); threads that can be
        interrupted override this."""


class Scheduler:
    """Per-CPU FIFO run queues with slices, wake-up preemption, pinning and idle balancing."""

    def __init__(self, env: Environment, cpus: list[HostCpu], timeslice_ns: int,
                 wakeup_preempt: bool, c_context_switch: int, findings: Findings,
                 tracer: Tracer | None) -> None:
        self.env = env
        self.cpus = cpus
        self.timeslice_ns = timeslice_ns
        self.wakeup_preempt = wakeup_preempt
        self.c_context_switch = c_context_switch
        self.findings = findings
        self.tracer = tracer
        # sorted indices: CPUs with nothing to run; CPUs whose queue holds an unpinned thread
        self.idle: list[int] = [c.index for c in cpus]
        self.pullable: list[int] = []
        # CPU hotplug: KVM's callbacks (kvm_offline_cpu / kvm_online_cpu, installed by KVM),
        # and the event a CPU being taken down waits on until its last thread left
        self.cpuhp_teardown: Callable[[HostCpu], None] | None = None
        self.cpuhp_startup: Callable[[HostCpu], None] | None = None
        self.emptied: dict[int, Event] = {}

    # --- bookkeeping of the two sorted lists ----------------------------------------------
    def _set_idle(self, cpu: HostCpu, idle: bool) -> None:
        if idle and not cpu.active:
            return  # a CPU going down or offline is never a place to run
        lst = self.idle
        i = bisect_right(lst, cpu.index)
        present = i > 0 and lst[i - 1] == cpu.index
        if idle and not present:
            lst.insert(i, cpu.index)
        elif not idle and present:
            del lst[i - 1]

    def _enqueue(self, cpu: HostCpu, t: Thread) -> None:
        cpu.rq.append(t)
        if t.pin is None:
            cpu.unpinned_queued += 1
            if cpu.unpinned_queued == 1:
                insort(self.pullable, cpu.index)

    def _dequeued(self, cpu: HostCpu, t: Thread) -> None:
        if t.pin is None:
            cpu.unpinned_queued -= 1
            if cpu.unpinned_queued == 0:
                self.pullable.remove(cpu.index)

    @staticmethod
    def _next_after(lst: list[int], index: int) -> int | None:
        """The first index in sorted `lst` after `index`, wrapping around (not `index`)."""
        if not lst:
            return None
        i = bisect_right(lst, index)
        nxt = lst[i] if i < len(lst) else lst[0]
        return None if nxt == index else nxt

    # --- scheduling -----------------------------------------------------------------------
    def select_cpu(self, t: Thread) -> HostCpu:
        """select_task_rq: the pinned CPU; else the previous CPU if idle; else the next idle
        CPU after it; else the previous CPU."""
        cpus = self.cpus
        if t.pin is not None:
            if cpus[t.pin].active:
                return cpus[t.pin]
            t.pin = None  # select_fallback_rq: the only allowed CPU is going down
        prev = t.cpu
        if not prev.active:  # select_fallback_rq: the first active CPU after it
            nxt = self._next_after(self.idle, prev.index)
            if nxt is not None:
                return cpus[nxt]
            return next(c for c in cpus[prev.index + 1:] + cpus[:prev.index] if c.active)
        if prev.curr is None and not prev.rq:
            return prev
        nxt = self._next_after(self.idle, prev.index)
        return cpus[nxt] if nxt is not None else prev

    def try_to_wake_up(self, t: Thread) -> None:
        """try_to_wake_up: make a sleeping thread runnable and place it (select_task_rq,
        then wakeup preemption or, without it, the running task's slice)."""
        if t.state != SLEEPING:
            return
        t.state = RUNNABLE
        self._place(t)

    def resched_curr(self, cpu: HostCpu) -> None:
        """resched_curr: set need_resched on the CPU's current task and interrupt it (the
        reschedule IPI is not timed; the current task is disturbed at once)."""
        curr = cpu.curr
        if curr is not None and not curr.need_resched:
            curr.need_resched = True
            curr.disturb(RESCHED)

    def _arm_slice(self, cpu: HostCpu) -> None:
        cpu.slice_gen += 1
        gen = cpu.slice_gen
        ev = self.env.timeout(self.timeslice_ns)
        ev.callbacks.append(lambda _e: self._slice_expired(cpu, gen))

    def _slice_expired(self, cpu: HostCpu, gen: int) -> None:
        if gen == cpu.slice_gen and cpu.rq:
            self.resched_curr(cpu)

    def switch_out(self, cpu: HostCpu, prev: Thread, runnable: bool) -> None:
        """__schedule from `prev` on `cpu` (prev already ran its preempt notifiers).

        ``runnable`` = preempted (goes to the tail of this CPU's queue) rather than sleeping.
        """
        now = self.env.now
        self.save_fsgs(cpu, prev)
        prev.need_resched = False
        cpu.curr = None
        cpu.idle_since = now
        prev.run_event = self.env.event()
        if not cpu.active:  # the CPU is going down: its last thread leaves it
            self.leave_dying_cpu(cpu, prev, runnable)
            return
        if runnable:
            prev.state = RUNNABLE
            self._enqueue(cpu, prev)
        else:
            prev.state = SLEEPING
        if cpu.rq:
            nxt: Thread | None = cpu.rq.popleft()
            assert nxt is not None
            self._dequeued(cpu, nxt)
        else:
            nxt = self._pull(cpu)
        if nxt is None:
            self._set_idle(cpu, True)
            tracer = self.tracer
            if tracer is not None:
                tracer.emit(now, "cpu_state", cpu.index, None, what="idle", thread=None)
            return
        self._dispatch(cpu, nxt)

    def _place(self, t: Thread) -> None:
        """Put a runnable thread that is on no CPU on one: select_task_rq, then run it on an
        empty CPU, or queue it with wakeup preemption or, without it, the running task's
        slice."""
        cpu = self.select_cpu(t)
        if cpu.curr is None and not cpu.rq:
            self._dispatch(cpu, t)
            return
        self._enqueue(cpu, t)
        self._set_idle(cpu, False)
        if self.wakeup_preempt:
            self.resched_curr(cpu)
        else:
            self._arm_slice(cpu)

    def leave_dying_cpu(self, cpu: HostCpu, prev: Thread, runnable: bool) -> None:
        """switch_out on a CPU going down: `prev` (preempted to make it leave, or going to
        sleep) is moved to another CPU, and this CPU stays empty."""
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env.now, "cpu_state", cpu.index, None, what="idle", thread=None)
        if runnable:
            prev.state = RUNNABLE
            self._place(prev)
        else:
            prev.state = SLEEPING
        emptied = self.emptied.pop(cpu.index, None)
        if emptied is not None:
            emptied.succeed()

    def cpu_down(self, cpu: HostCpu) -> ProcessGenerator:
        """A CPU hot-unplug, in the kernel's order: the CPU leaves the scheduler's choices
        (sched_cpu_deactivate), its queued threads move away and the running one is made
        to leave (pins to it broken, as select_fallback_rq does: "no longer affine"), then,
        on the empty CPU, the teardown callbacks run: KVM's kvm_offline_cpu.

        Simplified: the hotplug thread's own time and the CPU's stop are not modelled; the
        teardown runs the instant the CPU is empty, and the CPU is offline right after."""
        cpu.active = False
        self._set_idle(cpu, False)
        rq = cpu.rq
        while rq:  # (select_cpu breaks a pin to this CPU as it places each one)
            t = rq.popleft()
            self._dequeued(cpu, t)
            self._place(t)
        if cpu.curr is not None:
            emptied = self.env.event()
            self.emptied[cpu.index] = emptied
            self.resched_curr(cpu)
            yield emptied
        teardown = self.cpuhp_teardown
        if teardown is not None:
            teardown(cpu)
        cpu.online = False

    def cpu_up(self, cpu: HostCpu) -> None:
        """The CPU comes back: the startup callbacks (kvm_online_cpu), then it is a place to
        run again and balances load onto itself at once."""
        cpu.online = True
        cpu.cpu_init()
        startup = self.cpuhp_startup
        if startup is not None:
            startup(cpu)
        cpu.active = True
        self._set_idle(cpu, True)
        self.idle_balance(cpu)

    def idle_balance(self, cpu: HostCpu) -> bool:
        """An idle CPU's periodic idle balance (run from its tick in Linux): pull a runnable
        unpinned thread queued on another CPU, as a CPU going idle does, and run it.
        Returns whether it found one."""
        if cpu.curr is not None or cpu.rq or not cpu.active:
            return False
        t = self._pull(cpu)
        if t is None:
            return False
        self._dispatch(cpu, t)
        return True

    def _pull(self, cpu: HostCpu) -> Thread | None:
        """Idle balancing: take the first unpinned runnable thread of the next CPU (after
        this one, wrapping around) whose queue has one."""
        index = self._next_after(self.pullable, cpu.index)
        if index is None:
            return None
        other = self.cpus[index]
        for t in other.rq:
            if t.pin is None:
                other.rq.remove(t)
                self._dequeued(other, t)
                if not other.rq and other.curr is None:
                    self._set_idle(other, True)
                return t
        raise AssertionError(f"tdsim bug: cpu{index} listed as pullable with none queued")

    def _dispatch(self, cpu: HostCpu, t: Thread) -> None:
        now = self.env.now
        if cpu.curr is not None:
            self.findings.record("cpu_runs_one_thing", cpu.index, t.name,
                                 f"{t.name} dispatched while {cpu.curr.name} runs")
        else:
            cpu.ns[IDLE] += now - cpu.idle_since
        if t.state == RUNNING:
            self.findings.record("vcpu_on_one_cpu", cpu.index, t.name,
                                 f"{t.name} dispatched on cpu{cpu.index} while running on "
                                 f"cpu{t.cpu.index}")
        cpu.curr = t
        self._set_idle(cpu, False)
        cpu.stat = t.stat
        t.state = RUNNING
        t.cpu = cpu
        # __switch_to: load the incoming task's GS base (FSGSBASE: no WRMSR).
        cpu.msr[arch.MSR_KERNEL_GS_BASE] = t.gsbase
        cpu.acc += self.c_context_switch
        if cpu.rq:
            self._arm_slice(cpu)
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(now, "sched_switch", cpu.index, t.name, prev=None, next=t.name)
        t.run_event.succeed(cpu)

    def save_fsgs(self, cpu: HostCpu, prev: Thread) -> None:
        """__switch_to's save_fsgs(): the outgoing task's GS base is read from the hardware
        into thread.gsbase.

        If KVM left a guest/module value in KERNEL_GS_BASE, the task would now carry it:
        that is the finding, and tdsim then keeps the task's own value so that one fault is
        counted once."""
        hw = cpu.msr[arch.MSR_KERNEL_GS_BASE]
        if hw != prev.user_gsbase:
            self.findings.record(
                "host_state_leak", cpu.index, prev.name,
                f"context switch saved KERNEL_GS_BASE={hw:#x} as {prev.name}'s GS base "
                f"(its own is {prev.user_gsbase:#x})", msr=arch.MSR_KERNEL_GS_BASE)
        else:
            prev.gsbase = hw


def cpu_hotplug(env: Environment, sched: Scheduler, cpu: HostCpu, offline_ns: int,
                online_ns: int | None, stat: Stat, tracer: Tracer | None) -> ProcessGenerator:
    """``[[host.hotplug]]``: take `cpu` down at `offline_ns`, bring it back at `online_ns`."""
    yield env.timeout(offline_ns)
    yield from sched.cpu_down(cpu)
    stat["cpu_offline"] += 1
    if tracer is not None:
        tracer.emit(env.now, "cpu_hotplug", cpu.index, None, state="offline")
    if online_ns is None:
        return
    if online_ns > env.now:
        yield env.timeout(online_ns - env.now)
    sched.cpu_up(cpu)
    stat["cpu_online"] += 1
    if tracer is not None:
        tracer.emit(env.now, "cpu_hotplug", cpu.index, None, state="online")


class HostTask(Thread):
    """A host user thread alternating CPU bursts and sleeps (e.g. a busy service)."""

    def __init__(self, env: Environment, index: int, rng: random.Random, run_ns: int,
                 sleep_ns: int, exp: bool, start_cpu: HostCpu, sched: Scheduler,
                 stat: Stat, tracer: Tracer | None) -> None:
        super().__init__(env, f"task{index}", None, 0x7F0000000000 + index * 0x1000, stat,
                         tracer, start_cpu)
        self.rng = rng
        self.run_ns = run_ns
        self.sleep_ns = sleep_ns
        self.exp = exp
        self.sched = sched
        self.remaining = 0
        self.in_user = False
        # [host] gs_base_change_hz: the task's user code changes its GS base
        self.gs_base_changes: UserGsBaseChanges | None = None

    def _draw(self, mean: int) -> int:
        if not self.exp or mean == 0:
            return mean
        return exp_ns(self.rng, mean)

    def disturb(self, cause: Cause) -> None:
        """need_resched preempts the task's user code."""
        if cause is RESCHED and self.in_user:
            self.in_user = False
            assert self.proc is not None
            self.proc.interrupt(cause)

    def main(self) -> ProcessGenerator:
        env = self.env
        sched = self.sched
        yield env.timeout(self._draw(self.sleep_ns))  # staggered start
        while True:
            sched.try_to_wake_up(self)
            cpu: HostCpu = yield self.run_event
            self.remaining = self._draw(self.run_ns)
            while True:
                # Return to user mode on this CPU: the user-return notifier runs here.
                cpu.exit_to_user_mode(self)
                gs = self.gs_base_changes
                if gs is not None:
                    gs.in_user_mode(self, cpu, self.remaining)
                work = cpu.acc
                cpu.acc = 0
                self.begin_seg(HOST_TASK, work + self.remaining, HOST_TASK)
                self.in_user = True
                try:
                    yield env.timeout(work + self.remaining)
                    self.in_user = False
                    self.end_seg(env.now)
                    break
                except Interrupt:
                    ran = self.end_seg(env.now)
                    self.remaining -= max(0, ran - work)
                    sched.switch_out(cpu, self, runnable=True)
                    cpu = yield self.run_event
            sched.switch_out(cpu, self, runnable=False)
            yield env.timeout(self._draw(self.sleep_ns))
