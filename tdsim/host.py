"""Host CPUs, threads and the scheduler.

`HostCpu` is the hardware: the real contents of the MSRs that matter, per logical CPU.  KVM's
beliefs about those MSRs (the user-return cache) live in `tdsim.kvm_x86.KvmUserReturnMsrs`,
a separate object, so that a belief that disagrees with the hardware can be seen.

Every RDMSR/WRMSR goes through `HostCpu.rdmsr` / `HostCpu.wrmsr`, which charge the cost to the
CPU's accumulator (`acc`, straight-line work not yet spent in a SimPy timeout) and count it by
MSR and by call site.

The scheduler is a small model of the Linux one: per-CPU FIFO run queues, a time slice when a
CPU is contended, optional wake-up preemption, pinning, wake-up placement on an idle CPU, and
idle balancing (a CPU that goes idle pulls an unpinned runnable thread from another CPU, which
is how unpinned vCPU threads migrate).  Context switches save the outgoing task's GS base from
the hardware (``save_fsgs``) and load the incoming task's, as ``__switch_to`` does; a task
whose saved GS base is not its own has had host state leak into it.
"""

from __future__ import annotations

from collections import defaultdict, deque
from typing import TYPE_CHECKING

from . import arch
from .rng import exp_ns

if TYPE_CHECKING:
    from .sim import Simulation

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
_WRMSR_MSR_KEYS = {msr: f"wrmsr.msr.{name}" for msr, name in arch.MSR_NAMES.items()}
_RDMSR_MSR_KEYS = {msr: f"rdmsr.msr.{name}" for msr, name in arch.MSR_NAMES.items()}


class HostCpu:
    """One host logical CPU: hardware MSR contents, what runs on it, its run queue, its time."""

    __slots__ = (
        "sim", "index", "msr", "uret", "curr", "rq", "ns", "idle_since", "acc", "stat",
        "slice_gen", "last_tdvpr", "associated_tdvcpus", "loaded_vcpu", "name",
    )

    def __init__(self, sim: "Simulation", index: int) -> None:
        self.sim = sim
        self.index = index
        self.name = f"host.cpu{index}"
        # The hardware truth.  KERNEL_GS_BASE holds the running task's user GS base.
        self.msr = {
            arch.MSR_STAR: arch.HOST_STAR,
            arch.MSR_LSTAR: arch.HOST_LSTAR,
            arch.MSR_CSTAR: 0,
            arch.MSR_SYSCALL_MASK: arch.HOST_SYSCALL_MASK,
            arch.MSR_TSC_AUX: arch.host_tsc_aux(index),
            arch.MSR_KERNEL_GS_BASE: 0,
        }
        self.uret = None  # KvmUserReturnMsrs, set up by KVM (kvm_user_return_msr_cpu_online)
        self.curr: Thread | None = None
        self.rq: deque[Thread] = deque()
        self.ns = [0, 0, 0, 0, 0]
        self.idle_since = 0
        self.acc = 0
        self.stat = sim.host_stat
        self.slice_gen = 0
        self.last_tdvpr = None  # TDX module: the TDVPR this LP last entered
        self.associated_tdvcpus: list = []  # KVM's per-CPU associated_tdvcpus list
        self.loaded_vcpu = None  # the KVM vCPU loaded on this CPU (vcpu_load..vcpu_put)

    def wrmsr(self, msr: int, value: int, site: str) -> None:
        """WRMSR on this CPU: the one place that writes hardware MSRs, charges and counts."""
        self.msr[msr] = value
        self.acc += self.sim.c_wrmsr
        stat = self.stat
        stat[_WRMSR_MSR_KEYS[msr]] += 1
        stat[site] += 1
        tracer = self.sim.tracer
        if tracer is not None:
            cur = self.curr
            tracer.emit(self.sim.env.now, "wrmsr", self.index, cur.name if cur else None,
                        msr=arch.MSR_NAMES[msr], site=site[11:], value=hex(value))

    def rdmsr(self, msr: int) -> int:
        """RDMSR on this CPU: charges and counts."""
        self.acc += self.sim.c_rdmsr
        self.stat[_RDMSR_MSR_KEYS[msr]] += 1
        return self.msr[msr]

    def host_irq(self, why: str = "other") -> None:
        """A host interrupt (tick, hrtimer, call-function IPI) arrives on this CPU now.
        `why` names its source for the ``irq_exits.<why>`` breakdown (issue 4)."""
        curr = self.curr
        if curr is not None and curr.is_vcpu:
            curr.notify_host_irq(why)


class Thread:
    """A host thread: a vCPU thread of the VMM or another host task."""

    is_vcpu = False
    category = HOST_TASK  # CPU time category of its kernel-side work

    def __init__(self, sim: "Simulation", name: str, pin: int | None, gsbase: int) -> None:
        self.sim = sim
        self.name = name
        self.pin = pin
        self.gsbase = gsbase  # the task's real user GS base (thread.gsbase)
        self.state = SLEEPING
        self.cpu: HostCpu | None = None  # the CPU it runs on or last ran on
        self.need_resched = False
        self.stat = sim.host_stat
        # segment accounting: [seg_k1: seg_d1][seg_k2: seg_d2][KVM: the rest]
        self.seg_t0 = -1
        self.seg_k1 = HOST_TASK
        self.seg_d1 = 0
        self.seg_k2 = HOST_TASK
        self.seg_d2 = 0
        self.run_event = sim.env.event()
        if sim.tracer is not None:  # cpu_state events; untraced, end_seg stays untouched
            self.end_seg = self._end_seg_traced

    # --- time accounting ------------------------------------------------------------------
    def begin_seg(self, k1: int, d1: int, k2: int = KVM, d2: int = 0) -> None:
        """Start a timed stretch on the CPU: d1 ns of k1, then d2 ns of k2, then KVM."""
        self.seg_t0 = self.sim.env.now
        self.seg_k1 = k1
        self.seg_d1 = d1
        self.seg_k2 = k2
        self.seg_d2 = d2

    def end_seg(self, t: int) -> int:
        """Account the running segment up to time t; returns the elapsed ns."""
        elapsed = t - self.seg_t0
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

    def _end_seg_traced(self, t: int) -> int:
        """`end_seg` when tracing: emit the segment's ``cpu_state`` events first."""
        self.trace_seg(self.sim.tracer, t - self.seg_t0)
        return Thread.end_seg(self, t)

    def trace_seg(self, tracer, elapsed: int) -> None:
        """Emit ``cpu_state`` for each part of the segment that ran (up to three: k1, k2, KVM),
        at the instant the part began (so these events are emitted after the fact)."""
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
        """Account the running segment up to `t` and keep its remainder open (warm-up)."""
        elapsed = t - self.seg_t0
        k1, d1, k2, d2 = self.seg_k1, self.seg_d1, self.seg_k2, self.seg_d2
        self.end_seg(t)
        if elapsed <= d1:
            self.begin_seg(k1, d1 - elapsed, k2, d2)
        elif elapsed <= d1 + d2:
            self.begin_seg(k2, d1 + d2 - elapsed, KVM, 0)
        else:
            self.begin_seg(KVM, 0, KVM, 0)

    # --- hooks the scheduler calls --------------------------------------------------------
    def resched(self) -> None:
        """need_resched was set for this running thread: act on it where the thread can."""

    def notify_host_irq(self, why: str = "other") -> None:  # only vCPU threads care
        pass


class Scheduler:
    """Per-CPU FIFO run queues with slices, wake-up preemption, pinning and idle balancing."""

    def __init__(self, sim: "Simulation", timeslice_ns: int, wakeup_preempt: bool) -> None:
        self.sim = sim
        self.cpus = sim.cpus
        self.timeslice_ns = timeslice_ns
        self.wakeup_preempt = wakeup_preempt

    def select_cpu(self, t: Thread) -> HostCpu:
        """select_task_rq: the pinned CPU; else the previous CPU if idle; else an idle CPU;
        else the previous CPU."""
        cpus = self.cpus
        if t.pin is not None:
            return cpus[t.pin]
        prev = t.cpu if t.cpu is not None else cpus[0]
        if prev.curr is None and not prev.rq:
            return prev
        n = len(cpus)
        for i in range(1, n):
            c = cpus[(prev.index + i) % n]
            if c.curr is None and not c.rq:
                return c
        return prev

    def wake_up(self, t: Thread) -> None:
        """try_to_wake_up: make a sleeping thread runnable and place it."""
        if t.state != SLEEPING:
            return
        t.state = RUNNABLE
        cpu = self.select_cpu(t)
        if cpu.curr is None and not cpu.rq:
            self._dispatch(cpu, t)
            return
        cpu.rq.append(t)
        if self.wakeup_preempt:
            self.resched_curr(cpu)
        else:
            self._arm_slice(cpu)

    def resched_curr(self, cpu: HostCpu) -> None:
        curr = cpu.curr
        if curr is not None and not curr.need_resched:
            curr.need_resched = True
            curr.resched()

    def _arm_slice(self, cpu: HostCpu) -> None:
        cpu.slice_gen += 1
        gen = cpu.slice_gen
        ev = self.sim.env.timeout(self.timeslice_ns)
        ev.callbacks.append(lambda _e: self._slice_expired(cpu, gen))

    def _slice_expired(self, cpu: HostCpu, gen: int) -> None:
        if gen == cpu.slice_gen and cpu.rq:
            self.resched_curr(cpu)

    def switch_out(self, cpu: HostCpu, prev: Thread, runnable: bool) -> None:
        """__schedule from `prev` on `cpu` (prev already ran its preempt notifiers).

        ``runnable`` = preempted (goes to the tail of this CPU's queue) rather than sleeping.
        """
        sim = self.sim
        now = sim.env.now
        self.save_fsgs(cpu, prev)
        prev.need_resched = False
        cpu.curr = None
        cpu.idle_since = now
        prev.run_event = sim.env.event()
        if runnable:
            prev.state = RUNNABLE
            cpu.rq.append(prev)
        else:
            prev.state = SLEEPING
        nxt = cpu.rq.popleft() if cpu.rq else self._pull(cpu)
        if nxt is None:
            if sim.tracer is not None:
                sim.tracer.emit(now, "cpu_state", cpu.index, None, what="idle", thread=None)
            return
        self._dispatch(cpu, nxt)

    def _pull(self, cpu: HostCpu) -> Thread | None:
        """Idle balancing: take an unpinned runnable thread from the first contended CPU."""
        cpus = self.cpus
        n = len(cpus)
        for i in range(1, n):
            other = cpus[(cpu.index + i) % n]
            for t in other.rq:
                if t.pin is None:
                    other.rq.remove(t)
                    return t
        return None

    def _dispatch(self, cpu: HostCpu, t: Thread) -> None:
        sim = self.sim
        now = sim.env.now
        if cpu.curr is not None:
            sim.violations.record("cpu_runs_one_thing", cpu.index, t.name,
                                  f"{t.name} dispatched while {cpu.curr.name} runs")
        if cpu.curr is None:
            cpu.ns[IDLE] += now - cpu.idle_since
        if t.state == RUNNING:
            sim.violations.record("vcpu_on_one_cpu", cpu.index, t.name,
                                  f"{t.name} dispatched on cpu{cpu.index} while running on "
                                  f"cpu{t.cpu.index}")
        cpu.curr = t
        cpu.stat = t.stat
        t.state = RUNNING
        t.cpu = cpu
        # __switch_to: load the incoming task's GS base (FSGSBASE: no WRMSR).
        cpu.msr[arch.MSR_KERNEL_GS_BASE] = t.gsbase
        cpu.acc += sim.c_context_switch
        if cpu.rq:
            self._arm_slice(cpu)
        if sim.tracer is not None:
            sim.tracer.emit(now, "sched_switch", cpu.index, t.name, prev=None, next=t.name)
        t.run_event.succeed(cpu)

    def save_fsgs(self, cpu: HostCpu, prev: Thread) -> None:
        """__switch_to's save_fsgs(): the outgoing task's GS base is read from the hardware.

        If KVM left a guest/module value in KERNEL_GS_BASE, the task now carries it."""
        hw = cpu.msr[arch.MSR_KERNEL_GS_BASE]
        if hw != prev.gsbase:
            self.sim.violations.record(
                "host_state_leak", cpu.index, prev.name,
                f"context switch saved KERNEL_GS_BASE={hw:#x} as {prev.name}'s GS base "
                f"(its own is {prev.gsbase:#x})")


class HostTask(Thread):
    """A host user thread alternating CPU bursts and sleeps (e.g. a busy service)."""

    def __init__(self, sim: "Simulation", index: int, rng, run_ns: int, sleep_ns: int,
                 exp: bool) -> None:
        super().__init__(sim, f"task{index}", None, gsbase=0x7F0000000000 + index * 0x1000)
        self.rng = rng
        self.run_ns = run_ns
        self.sleep_ns = sleep_ns
        self.exp = exp
        self.remaining = 0
        self.in_user = False
        self.proc = None
        self.start_cpu = index % len(sim.cpus)

    def _draw(self, mean: int) -> int:
        if not self.exp or mean == 0:
            return mean
        return exp_ns(self.rng, mean)

    def resched(self) -> None:
        if self.in_user:
            self.in_user = False
            self.proc.interrupt()

    def main(self):
        sim = self.sim
        env = sim.env
        sched = sim.sched
        self.cpu = sim.cpus[self.start_cpu]
        from simpy import Interrupt

        yield env.timeout(self._draw(self.sleep_ns))  # staggered start
        while True:
            sched.wake_up(self)
            cpu = yield self.run_event
            self.remaining = self._draw(self.run_ns)
            while True:
                # Return to user mode on this CPU: the user-return notifier runs here.
                sim.kvm.return_to_user(cpu, self)
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


def new_stat() -> defaultdict:
    return defaultdict(int)
