"""Choice points: where a run's random decisions are made, and how a schedule takes them over.

A run decides, from its named streams (`tdsim.rng`): the call and compute time of each guest
period (`tdsim.guest`), what each TDH.VP.ENTER returns and whether ``kvm_mmu_reload`` fails
(`tdsim.faults`), and when each asynchronous event arrives (the fault and interrupt sources).
A `Runtime` sits at those choice points for one run and can

* **supply** the decisions of a scenario's ``[schedule]`` (`tdsim.schedule`): its guest
  periods, its module outcomes and failed reloads at the entries it names, its events at the
  landmarks it names;
* **record** the decisions the streams make, as a schedule that replays the run
  (`tdsim.recording`);
* **observe** where each scheduled event really landed and which host-state strategy hook ran
  next on that vCPU: the coverage a search reports (`tdsim.hunt`).

Everything is wired at build time, by swapping the object a choice point calls (a guest's
period source, the module's outcome function, a vCPU's ``mmu_reload_fails`` and
``begin_entry``, the sources' injection functions): a run without a schedule, recording or
observer gets no runtime at all and pays nothing.

Entry segments are counted per vCPU (`tdsim.segment`: every TDH.VP.ENTER and every
``wait_for_sept_zap`` spin begins one, at ``begin_entry``); an event for entry k is placed
when segment k begins, at its landmark (`tdsim.schedule.landmark_ns`) plus its delay.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from . import arch, interrupts, sept
from .faults import module_outcome
from .guest import PeriodSource, tdvmcall_call
from .host import HOST_IRQ, HOST_TASK, SLEEPING, ProcessGenerator, Thread
from .kvm_tdx import VcpuTdx
from .schedule import (
    AT_ATTEMPT,
    AT_SEAMCALL,
    KINDS,
    LANDMARKS,
    Event,
    Period,
    Schedule,
    detail_choices,
    landmark_ns,
)
from .segment import PH_BLOCKED, PH_KERNEL, PH_POLL, PH_SEG, PH_STOPPED, PH_USER, PH_WAIT
from .strategies import HostStateStrategy, StrategyVcpu

if TYPE_CHECKING:
    from .clock import Environment
    from .config import ModelConfig
    from .faults import Faults
    from .guest import GuestVcpu
    from .host import HostCpu, Scheduler, Stat
    from .irqstats import IrqStats
    from .kvm_tdx import KvmTdx
    from .kvm_x86 import KvmVcpu, KvmX86
    from .sept import SeptZapper
    from .tdx_module import TdxModule
    from .trace import Tracer

class Model(Protocol):
    """What the choice points use of the built model (`tdsim.build.Model`, which builds
    and attaches them: this module cannot import it)."""

    env: Environment
    config: ModelConfig
    cpus: list[HostCpu]
    vcpus: list[KvmVcpu]
    sched: Scheduler
    irq: IrqStats
    host_stat: Stat
    module: TdxModule
    faults: Faults
    zappers: list[SeptZapper]
    kvm: KvmX86
    strategy: HostStateStrategy
    tracer: Tracer | None
    choices: Runtime | None


# Where a vCPU thread can be when an event lands (`position`): an entry segment's four
# stretches (named after the landmark that begins each), or outside an entry.
POSITIONS = LANDMARKS + ("kvm", "vmm", "halted", "runnable", "stopped")
_OUTSIDE = {PH_KERNEL: "kvm", PH_USER: "vmm", PH_BLOCKED: "halted", PH_POLL: "halted",
            PH_WAIT: "runnable", PH_STOPPED: "stopped"}
# The host-state strategy hooks (tdsim.strategies), as a search's coverage names them.
HOOKS = ("prepare_switch_to_guest", "vcpu_enter_exit", "prepare_switch_to_host",
         "user_return")
NO_HOOK = "none"


def position(vcpu: KvmVcpu, now: int) -> str:
    """Where the vCPU thread is at `now`: in its entry segment before the late check, after
    it (VM entry ahead), in the guest, at the exit; or outside an entry (`POSITIONS`)."""
    phase = vcpu.phase
    if phase != PH_SEG:
        return _OUTSIDE[phase]
    if now < vcpu.t_late:
        return "before_check"
    if now < vcpu.t_enter:
        return "after_check"
    if now < vcpu.t_guest_end:
        return "in_guest"
    return "exit"


@dataclass
class Landing:
    """Where one scheduled event took effect, and the strategy hook that ran next there."""

    kind: str
    vcpu: str | None
    entry: int    # the entry segment it was placed by (-1: at a time)
    at: str       # where it was placed
    landed: str   # `POSITIONS`, or "seamcall" / "attempt" for an outcome
    t_ns: int
    next_hook: str = NO_HOOK


@dataclass
class _VcpuState:
    """The choice-point state of one vCPU: its entry segments so far and their landmarks."""

    count: int = 0                      # entry segments begun
    marks: tuple[int, int, int] = (0, 0, 0)       # t_late, t_enter, t_guest_end of the last
    prev_marks: tuple[int, int, int] | None = None  # of the one before it


class Preempter(Thread):
    """A host task the schedule wakes on one CPU: it preempts what runs there (wake-up
    preemption, or at the end of the slice), runs ``run_ns`` of user code, and sleeps.  With
    `pull` set, an idle CPU's idle balance pulls the preempted thread when the task starts
    (a migration)."""

    def __init__(self, env: Environment, cpu: HostCpu, cpus: Sequence[HostCpu],
                 sched: Scheduler, run_ns: int, stat: Stat, tracer: Tracer | None) -> None:
        super().__init__(env, f"preempt{cpu.index}", cpu.index,
                         0x7F0200000000 + cpu.index * 0x1000, stat, tracer, cpu)
        self.cpus = cpus
        self.sched = sched
        self.run_ns = run_ns
        self.pull = False

    def wake(self, pull: bool) -> bool:
        """Wake the task (unless it is already awake); False if it was."""
        if self.state != SLEEPING or (self.proc is not None and self.proc.is_alive):
            return False
        self.pull = pull
        self.proc = self.env.process(self.main())
        return True

    def main(self) -> ProcessGenerator:
        env = self.env
        sched = self.sched
        sched.try_to_wake_up(self)
        cpu: HostCpu = yield self.run_event
        if self.pull:
            for other in self.cpus:
                if other is not cpu and sched.idle_balance(other):
                    break
        cpu.exit_to_user_mode(self)
        work = cpu.acc
        cpu.acc = 0
        self.begin_seg(HOST_TASK, work + self.run_ns, HOST_TASK)
        yield env.timeout(work + self.run_ns)
        self.end_seg(env.now)
        sched.switch_out(cpu, self, runnable=False)


class Runtime:
    """The choice points of one run (module docstring).  Build it with what it should do,
    pass it to `tdsim.sim.Simulation` (``choices=``); the build step asks it for each
    guest's period source and attaches it to the built model."""

    def __init__(self, record: bool = False, observe: bool = False, stop_after: int = 0,
                 on_done: Callable[[], None] | None = None) -> None:
        self.schedule = Schedule()
        self.recording = record
        self.observing = observe
        # a search's short runs: `on_done` once every vCPU has begun `stop_after` segments
        self.stop_after = stop_after
        self.on_done = on_done
        self._done = 0
        self.model: Model | None = None
        self.sched: Scheduler
        self.irq: IrqStats
        self.host_stat: Stat
        self._at_entry: dict[tuple[str, int], list[Event]] = {}
        self._outcomes: dict[tuple[str, int], Event] = {}
        self._attempts: dict[tuple[str, int], Event] = {}
        self._timed: list[Event] = []
        self._state: dict[str, _VcpuState] = {}
        self._preempters: dict[int, Preempter] = {}
        self._zapping: set[str] = set()
        # what was recorded / observed
        self.landings: list[Landing] = []
        self._unresolved: list[tuple[Landing, KvmVcpu, int]] = []
        self._recorded: list[tuple[int, int, Event]] = []  # (t, order, event)
        self._recorded_guest: dict[str, list[tuple[int, str]]] = {}
        self._guest_mean: dict[str, int] = {}

    # --- build time ------------------------------------------------------------------------
    def prepare(self, schedule: Schedule) -> None:
        """Take the scenario's schedule (build step, before the guests are made)."""
        self.schedule = schedule
        for e in schedule.events:
            where = e.where
            if e.t_ns is not None:
                self._timed.append(e)
            elif where == AT_SEAMCALL:
                self._outcomes[(str(e.vcpu), int(e.entry or 0))] = e
            elif where == AT_ATTEMPT:
                self._attempts[(str(e.vcpu), int(e.entry or 0))] = e
            else:
                self._at_entry.setdefault((str(e.vcpu), int(e.entry or 0)), []).append(e)

    def periods_for(self, vcpu: str) -> PeriodSource | None:
        """The period source of `vcpu`'s statistical guest: the schedule's list for it, a
        recording of its stream, or None (the guest draws from its stream as usual)."""
        periods = self.schedule.guest.get(vcpu)
        if periods:
            return _supply_periods(periods)
        if self.recording:
            log = self._recorded_guest[vcpu] = []

            def record(guest: GuestVcpu) -> Callable[[], tuple[int, Any]]:
                self._guest_mean[vcpu] = guest.mean_ns

                def draws() -> Iterator[tuple[int, Any]]:
                    while True:
                        for item in guest._draw_batch():
                            log.append((item[0], item[1][0]))
                            yield item
                return draws().__next__
            return record
        return None

    def attach(self, model: Model) -> None:
        """Install the choice points on the built `model` (before its processes start)."""
        self.model = model
        self.sched = model.sched
        self.irq = model.irq
        self.host_stat = model.host_stat
        model.choices = self
        for vcpu in model.vcpus:
            self._state[vcpu.name] = _VcpuState()
        need_entries = bool(self.schedule.events) or self.recording or self.observing
        if need_entries:
            for vcpu in model.vcpus:
                self._hook_entries(vcpu)
        module = model.module
        fallback_outcome = module.vp_enter_outcome if self.schedule.random_sources else None
        if self._outcomes or (self.recording and fallback_outcome is not None):
            module.vp_enter_outcome = self._vp_enter_outcome(fallback_outcome)
        elif not self.schedule.random_sources:
            module.vp_enter_outcome = None
        for vcpu in model.vcpus:
            fallback = vcpu.mmu_reload_fails if self.schedule.random_sources else None
            mine = any(name == vcpu.name for name, _ in self._attempts)
            if mine or (self.recording and fallback is not None):
                vcpu.mmu_reload_fails = self._mmu_reload_fails(vcpu, fallback)
            elif not self.schedule.random_sources:
                vcpu.mmu_reload_fails = None
        if self.observing:
            self._spy_strategy(model)
        env = model.env
        for e in self._timed:
            target = self._vcpu(e.vcpu) if e.vcpu is not None else None
            self._place(env, int(e.t_ns or 0), e, target, -1)

    @property
    def tap(self) -> Callable[[str, Callable[..., None]], Callable[..., None]] | None:
        """The wrapper the random sources' injections go through while recording."""
        return self._tap if self.recording else None

    @property
    def random_sources(self) -> bool:
        """Whether the scenario's random sources of injected events run."""
        return self.schedule.random_sources

    def _vcpu(self, name: str | None) -> KvmVcpu:
        assert self.model is not None
        for vcpu in self.model.vcpus:
            if vcpu.name == name:
                return vcpu
        raise AssertionError(f"tdsim bug: no vCPU {name!r} (the scenario checks names)")

    # --- entry segments and landmarks ------------------------------------------------------
    def _hook_entries(self, vcpu: KvmVcpu) -> None:
        """Count `vcpu`'s entry segments at ``begin_entry`` and place the events of each."""
        begin = vcpu.begin_entry
        state = self._state[vcpu.name]
        at_entry = self._at_entry
        env = vcpu.env
        name = vcpu.name

        def begin_entry(cpu: HostCpu, guest_ns: int, exit_ns: int) -> Any:
            ev = begin(cpu, guest_ns, exit_ns)
            k = state.count
            state.count = k + 1
            if k + 1 == self.stop_after:
                self._vcpu_done()
            state.prev_marks = state.marks if k else None
            state.marks = marks = (vcpu.t_late, vcpu.t_enter, vcpu.t_guest_end)
            pending = at_entry.pop((name, k), None)
            if pending:
                now = env.now
                for e in pending:
                    t = landmark_ns(e.where, *marks) + e.delay_ns
                    self._place(env, max(now, t), e, vcpu, k)
            return ev

        vcpu.begin_entry = begin_entry  # type: ignore[method-assign]

    def _vcpu_done(self) -> None:
        self._done += 1
        if self._done == len(self._state) and self.on_done is not None:
            self.on_done()

    def _place(self, env: Environment, t: int, e: Event, vcpu: KvmVcpu | None,
               entry: int) -> None:
        ev = env.timeout(t - env.now)
        ev.callbacks.append(lambda _ev: self._fire(e, vcpu, entry))

    def _fire(self, e: Event, vcpu: KvmVcpu | None, entry: int) -> None:
        """Apply one scheduled asynchronous event now."""
        model = self.model
        assert model is not None
        now = model.env.now
        at = e.where if entry >= 0 else "t"
        if vcpu is None:  # a host interrupt or NMI on a CPU
            cpu = model.cpus[int(e.cpu or 0)]
            self._trace(now, cpu.index, None, e.kind, entry, at, "cpu")
            if e.kind == "host_nmi":
                interrupts.host_nmi(self.host_stat)(cpu)
            else:
                cpu.host_irq(HOST_IRQ["tick"])
            return
        landed = position(vcpu, now)
        self._landed(e.kind, vcpu, entry, at, landed, now)
        if landed == "stopped":  # as the random sources, nothing reaches a stopped vCPU
            return
        kind = KINDS[e.kind]
        assert kind.inject is not None
        kind.inject(self, vcpu, self._detail(e))

    def _detail(self, e: Event) -> int:
        if e.detail is not None:
            return e.detail
        assert self.model is not None
        choices = detail_choices(e.kind, self.model.config.faults)
        return choices[0] if choices else 0

    def _landed(self, kind: str, vcpu: KvmVcpu, entry: int, at: str, landed: str,
                now: int) -> None:
        cpu = vcpu.cpu
        self._trace(now, cpu.index if cpu is not None else -1, vcpu.name, kind, entry, at,
                    landed)
        if self.observing:
            landing = Landing(kind, vcpu.name, entry, at, landed, now)
            self.landings.append(landing)
            self._unresolved.append((landing, vcpu, cpu.index if cpu is not None else -1))

    def _trace(self, now: int, cpu: int, vcpu: str | None, kind: str, entry: int, at: str,
               landed: str) -> None:
        assert self.model is not None
        tracer = self.model.tracer
        if tracer is not None:
            tracer.emit(now, "inject", cpu, vcpu, what=kind, entry=entry, at=at,
                        landed=landed)

    # --- outcomes at an entry --------------------------------------------------------------
    def _vp_enter_outcome(self, fallback: Callable[[Any], tuple[int, int | None, str | None]]
                          | None) -> Callable[[Any], tuple[int, int | None, str | None]]:
        outcomes = self._outcomes
        state = self._state
        tdx_success = (arch.TDX_SUCCESS, None, None)

        def vp_enter_outcome(vcpu: Any) -> tuple[int, int | None, str | None]:
            k = state[vcpu.name].count
            e = outcomes.pop((vcpu.name, k), None)
            if e is not None:
                self._landed(e.kind, vcpu, k, AT_SEAMCALL, AT_SEAMCALL, vcpu.env.now)
                return module_outcome(e.kind, self._detail(e))
            if fallback is None:
                return tdx_success
            out = fallback(vcpu)
            if self.recording and out[2] is not None:
                kind, detail = _outcome_kind(out)
                self._record(vcpu.env.now, Event(kind, vcpu.name, k, detail=detail))
            return out
        return vp_enter_outcome

    def _mmu_reload_fails(self, vcpu: KvmVcpu,
                          fallback: Callable[[], bool] | None) -> Callable[[], bool]:
        attempts = self._attempts
        state = self._state[vcpu.name]
        name = vcpu.name

        def mmu_reload_fails() -> bool:
            k = state.count
            e = attempts.pop((name, k), None)
            if e is not None:
                self._landed(e.kind, vcpu, k, AT_ATTEMPT, AT_ATTEMPT, vcpu.env.now)
                return True
            if fallback is None or not fallback():
                return False
            if self.recording:
                self._record(vcpu.env.now, Event("mmu_reload_fail", name, k))
            return True
        return mmu_reload_fails

    # --- what the injections need (tdsim.schedule.Injector) --------------------------------
    def sept_zap_retry(self, vcpu: KvmVcpu) -> None:
        """A SEPT-zap retry (faults.sept_zap) on `vcpu`'s TD."""
        model = self.model
        assert model is not None
        hold = round(model.config.faults["sept_zap_us"] * 1000)
        vm: Any = vcpu.vm
        model.env.process(model.faults.sept_zap_retry(vm, hold))

    def zap(self, vcpu: KvmVcpu) -> None:
        """One SEPT zap of `vcpu`'s TD ([vm.sept]); none while one is in progress there."""
        model = self.model
        assert model is not None
        vm: KvmTdx = vcpu.vm  # type: ignore[assignment]
        if vm.name in self._zapping:
            return
        zapper = next((z for z in model.zappers if z.vm is vm), None)
        if zapper is None:
            zapper = sept.new_zapper(model.env, vm, model.config.costs,
                                     model.config.sim.seed, self.host_stat, model.tracer)
            model.zappers.append(zapper)
        self._zapping.add(vm.name)
        model.env.process(self._zap(zapper))

    def _zap(self, zapper: Any) -> ProcessGenerator:
        yield from zapper.tdx_sept_zap()
        self._zapping.discard(zapper.vm.name)

    def preempt(self, vcpu: KvmVcpu, migrate: bool) -> None:
        """A host task wakes on `vcpu`'s CPU (and, to migrate, an idle CPU pulls the vCPU
        thread once it is preempted)."""
        model = self.model
        assert model is not None
        cpu = vcpu.cpu
        task = self._preempters.get(cpu.index)
        if task is None:
            task = self._preempters[cpu.index] = Preempter(
                model.env, cpu, model.cpus, model.sched, model.config.host.task_run_ns,
                self.host_stat, model.tracer)
        task.wake(migrate)

    # --- recording -------------------------------------------------------------------------
    def _tap(self, source: str, fire: Callable[..., None]) -> Callable[..., None]:
        """Wrap one random source's injection: note where each arrival lands."""
        def tapped(target: Any, *rest: Any) -> None:
            self._record_arrival(source, target)
            fire(target, *rest)
        return tapped

    def _record_arrival(self, source: str, target: Any) -> None:
        model = self.model
        assert model is not None
        now = model.env.now
        if source in ("sept_zap", "tlb_flush"):  # a TD / VM: its first vCPU places it
            vcpus = target.vcpus if source == "sept_zap" else target
            vcpu: KvmVcpu | None = vcpus[0]
        elif source == "host_nmi":  # a CPU: the vCPU running there, if any
            curr = target.curr
            vcpu = curr if curr is not None and curr.is_vcpu else None
            if vcpu is None:
                self._record(now, Event("host_nmi", t_ns=now, cpu=target.index))
                return
        else:
            vcpu = target
        assert vcpu is not None
        self._record(now, self._placed(source, vcpu, now))

    def _placed(self, kind: str, vcpu: KvmVcpu, now: int) -> Event:
        """An event of `kind` on `vcpu` at `now`, placed by the latest landmark before it."""
        state = self._state[vcpu.name]
        if state.count:
            k = state.count - 1
            for marks, entry in ((state.marks, k), (state.prev_marks, k - 1)):
                if marks is None:
                    continue
                for at in reversed(LANDMARKS):
                    t = landmark_ns(at, *marks)
                    if t <= now:
                        return Event(kind, vcpu.name, entry, at, now - t)
        return Event(kind, vcpu.name, t_ns=now)

    def _record(self, t: int, e: Event) -> None:
        self._recorded.append((t, len(self._recorded), e))

    def recorded(self) -> Schedule:
        """What the recorded run's streams decided, as a schedule that replays it (with the
        random sources off, `replay`)."""
        events = tuple(e for _, _, e in sorted(self._recorded, key=lambda r: r[:2]))
        guest: dict[str, tuple[Period, ...]] = {}
        for name, log in self._recorded_guest.items():
            if not log:
                continue
            mean = self._guest_mean[name]
            guest[name] = tuple(Period(call, None if ns == mean else ns) for ns, call in log)
        return Schedule(events, guest, random_sources=False)

    # --- observing: which strategy hook runs next --------------------------------------------
    def _spy_strategy(self, model: Model) -> None:
        spy = _StrategySpy(model.strategy, self._hook_ran)
        model.kvm.strategy = spy  # (the user-return notifier)
        for vcpu in model.vcpus:
            if isinstance(vcpu, VcpuTdx):
                vcpu.strategy = spy
                if vcpu.strategy_vcpu_enter_exit is not None:  # (kept None if not overridden)
                    vcpu.strategy_vcpu_enter_exit = spy.vcpu_enter_exit

    def _hook_ran(self, hook: str, vcpu: Any, cpu: HostCpu) -> None:
        if not self._unresolved:
            return
        keep = []
        for landing, who, where in self._unresolved:
            if who is vcpu or (vcpu is None and where == cpu.index):
                landing.next_hook = hook
            else:
                keep.append((landing, who, where))
        self._unresolved = keep

    def coverage(self) -> set[tuple[str, str, str]]:
        """The (event kind, where it landed, next strategy hook) combinations reached."""
        return {(x.kind, x.landed, x.next_hook) for x in self.landings}


class _StrategySpy(HostStateStrategy):
    """A host-state strategy that tells the runtime which hook runs, then runs it."""

    def __init__(self, inner: HostStateStrategy, ran: Callable[[str, Any, Any], None]
                 ) -> None:
        self.inner = inner
        self.name = inner.name
        self._ran = ran

    def prepare_switch_to_guest(self, vcpu: StrategyVcpu, cpu: HostCpu) -> None:
        self._ran("prepare_switch_to_guest", vcpu, cpu)
        self.inner.prepare_switch_to_guest(vcpu, cpu)

    def vcpu_enter_exit(self, vcpu: StrategyVcpu, cpu: HostCpu, vp_enter_ret: int) -> None:
        self._ran("vcpu_enter_exit", vcpu, cpu)
        self.inner.vcpu_enter_exit(vcpu, cpu, vp_enter_ret)

    def prepare_switch_to_host(self, vcpu: StrategyVcpu, cpu: HostCpu) -> None:
        self._ran("prepare_switch_to_host", vcpu, cpu)
        self.inner.prepare_switch_to_host(vcpu, cpu)

    def user_return(self, cpu: HostCpu) -> None:
        self._ran("user_return", None, cpu)
        self.inner.user_return(cpu)


def _supply_periods(periods: Sequence[Period]) -> PeriodSource:
    def supply(guest: GuestVcpu) -> Callable[[], tuple[int, Any]]:
        items = [(p.compute_ns if p.compute_ns is not None else guest.mean_ns,
                  tdvmcall_call(p.call)) for p in periods]
        return itertools.chain(items, itertools.repeat(items[-1])).__next__
    return supply


def _outcome_kind(out: tuple[int, int | None, str | None]) -> tuple[str, int | None]:
    """The scheduled event (kind, detail) of a module outcome `out` of `Faults`."""
    status, injected, kind = out
    assert kind is not None
    if kind in ("operand_busy", "operand_busy_late"):
        return "operand_busy", status & 0xFFFF
    if kind == "sw_error":
        return kind, status
    if kind == "error_exit":
        assert injected is not None
        return kind, injected & 0xFFFF
    return kind, None


__all__ = ["HOOKS", "POSITIONS", "Landing", "Preempter", "Runtime", "position"]
