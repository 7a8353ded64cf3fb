"""The scripted schedule: a scenario's ``[schedule]``, the decisions of a run written down.

A run's random streams decide, as it goes, which TDVMCALL each guest issues and after how
long, what TDH.VP.ENTER returns at each entry, whether ``kvm_mmu_reload`` fails, and when a
kick, signal, interrupt, preemption, zap or migration arrives.  A schedule states some of
those decisions instead (`tdsim.choices` applies it to a run, records one from a run, and
lets a search such as ``tdsim hunt`` supply them):

* ``[[schedule.event]]``: one injected event each.  Its ``kind`` is one of `EVENT_KINDS`
  (declared here once; the scenario schema, the docs and the hunt's search space derive from
  it).  It lands on one vCPU, placed against that vCPU's *entry segments* (`tdsim.segment`):
  ``entry = k`` is the vCPU's k-th entry segment (0 = its first; every TDH.VP.ENTER and
  every ``wait_for_sept_zap`` spin begins one), and ``at`` the landmark of that segment
  (`LANDMARKS`) -- or, for a module outcome, the SEAMCALL that begins it (``seamcall``), for
  ``mmu_reload_fail`` the entry attempt (``attempt``).  ``delay_ns`` moves it later; ``t_ns``
  instead places it at an absolute time.
* ``[schedule.guest]``: per vCPU, the calls that end its compute periods, in order (each a
  TDVMCALL kind, or ``{ call = "io", compute_ns = 2500 }`` for another compute time than the
  workload's ``compute_us``); after the last, the last one repeats.

A schedule comes on top of the scenario's random sources; a reproducer written by ``tdsim
hunt`` switches those off, so that its few events are all that happens besides the guests'
calls.  Documented in docs/hunt.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from . import faults, interrupts
from .guest import TDVMCALL_KINDS
from .host import HOST_IRQ

if TYPE_CHECKING:
    from .host import Scheduler, Stat
    from .irqstats import IrqStats
    from .kvm_x86 import KvmVcpu

# The landmarks of an entry segment an asynchronous event can be placed at, in order, each
# at one instant (`landmark_ns`):
#   before_check  the last nanosecond before the late kvm_vcpu_exit_request() check (inside
#                 the IN_GUEST_MODE window: a kick there wins the cmpxchg and aborts the entry)
#   after_check   the check itself: IRQs are off and the entry is committed (VM entry ahead)
#   in_guest      half way through the guest's planned run (VM entry if it runs for 0 ns)
#   exit          the guest's planned exit (its TDVMCALL): KVM is handling the exit
LANDMARKS = ("before_check", "after_check", "in_guest", "exit")
AT_SEAMCALL = "seamcall"  # a module outcome: the TDH.VP.ENTER that begins the segment
AT_ATTEMPT = "attempt"    # mmu_reload_fail: the entry attempt that would begin it


def landmark_ns(at: str, t_late: int, t_enter: int, t_guest_end: int) -> int:
    """The instant of landmark `at` of an entry segment with these landmarks."""
    if at == "before_check":
        return t_late - 1
    if at == "after_check":
        return t_late
    if at == "in_guest":
        return t_enter + (t_guest_end - t_enter) // 2
    return t_guest_end


class Injector(Protocol):
    """What an event's injection may use of the run (`tdsim.choices.Runtime`)."""

    sched: Scheduler
    irq: IrqStats
    host_stat: Stat

    def sept_zap_retry(self, vcpu: KvmVcpu) -> None: ...

    def zap(self, vcpu: KvmVcpu) -> None: ...

    def preempt(self, vcpu: KvmVcpu, migrate: bool) -> None: ...


Inject = Callable[[Injector, "KvmVcpu", int], None]  # (run, target vCPU, detail)
Enabled = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]  # (scenario, its VM)


@dataclass(frozen=True)
class EventKind:
    """One kind of injected event: where it lands, what it does, and which of a scenario's
    knobs put it in the space a hunt searches."""

    name: str
    where: str   # "landmark" (asynchronous), AT_SEAMCALL or AT_ATTEMPT
    doc: str
    enabled: Enabled
    inject: Inject | None = None  # asynchronous kinds (the others are outcomes)
    td_only: bool = False
    details: str = ""  # what `detail` selects ("" = none), from the scenario's list

    @property
    def at(self) -> tuple[str, ...]:
        """Where it can be placed."""
        return LANDMARKS if self.where == "landmark" else (self.where,)


def _fault_on(key: str) -> Enabled:
    return lambda data, vm: bool(data["faults"][key] > 0)


def _fault_inject(knob: faults.FaultKnob) -> Inject:
    inject = knob.inject
    assert inject is not None

    def fire(run: Injector, vcpu: KvmVcpu, detail: int) -> None:
        inject(vcpu, run.sched)
    return fire


def _host_irq(run: Injector, vcpu: KvmVcpu, detail: int) -> None:
    vcpu.cpu.host_irq(HOST_IRQ["tick"])


def _host_nmi(run: Injector, vcpu: KvmVcpu, detail: int) -> None:
    interrupts.host_nmi(run.host_stat)(vcpu.cpu)


def _nmi(run: Injector, vcpu: KvmVcpu, detail: int) -> None:
    interrupts.vmm_inject_nmi(vcpu)


def _device_irq(run: Injector, vcpu: KvmVcpu, detail: int) -> None:
    intr = vcpu.vm.interrupts
    interrupts.device_irq(run.irq, intr is not None and intr.device_posting == "vtd")(vcpu)


def _tlb_flush(run: Injector, vcpu: KvmVcpu, detail: int) -> None:
    interrupts.kvm_flush_remote_tlbs(vcpu.vm.vcpus)


def _intr(key: str) -> Enabled:
    return lambda data, vm: bool(vm["interrupts"][key] > 0)


_DETAILS = {"operand_busy": "operand_busy_ids", "error_exit": "error_exit_low_bits",
            "sw_error": "sw_errors"}

EVENT_KINDS: tuple[EventKind, ...] = (
    # --- asynchronous: the late-abort sources of [faults] (docs/late-aborts.md) -------------
    *(EventKind(k.name, "landmark", k.doc, _fault_on(k.key), _fault_inject(k))
      for k in faults.FAULT_KNOBS if k.inject is not None),
    EventKind("sept_zap", "landmark", "a SEPT-zap retry raises wait_for_sept_zap for "
              "faults.sept_zap_us and kicks every vCPU of the TD (abort D)",
              _fault_on("sept_zap_hz"), lambda run, vcpu, d: run.sept_zap_retry(vcpu),
              td_only=True),
    # --- asynchronous: interrupt sources (docs/interrupts.md) -------------------------------
    EventKind("host_irq", "landmark", "a host interrupt (the tick) on the vCPU's CPU",
              lambda data, vm: bool(data["host"]["tick_hz"] > 0), _host_irq),
    EventKind("host_nmi", "landmark", "a host NMI (perf, watchdog) on the vCPU's CPU",
              lambda data, vm: bool(data["host"]["nmi_hz"] > 0), _host_nmi),
    EventKind("nmi", "landmark", "the VMM injects an NMI into the vCPU (kvm_inject_nmi)",
              _intr("nmi_hz"), _nmi),
    EventKind("device_irq", "landmark", "a device MSI is posted to the vCPU", _intr(
        "device_irq_hz"), _device_irq),
    EventKind("tlb_flush", "landmark", "a remote TLB flush: KVM_REQ_TLB_FLUSH on every vCPU "
              "of the VM, those in guest mode kicked", _intr("tlb_flush_hz"), _tlb_flush),
    EventKind("zap", "landmark", "one SEPT zap of the TD's private memory as [vm.sept] "
              "describes it (TDH.MEM.RANGE.BLOCK, TRACK and kick-and-wait, PAGE.REMOVE)",
              lambda data, vm: bool(vm["sept"]["zap_hz"] > 0),
              lambda run, vcpu, d: run.zap(vcpu), td_only=True),
    # --- asynchronous: the host scheduler ---------------------------------------------------
    EventKind("preempt", "landmark", "a host task wakes on the vCPU's CPU and runs "
              "host.task_run_us there (the vCPU thread is preempted)",
              lambda data, vm: bool(data["host"]["tasks"] > 0),
              lambda run, vcpu, d: run.preempt(vcpu, False)),
    EventKind("migrate", "landmark", "as preempt, and an idle CPU pulls the preempted vCPU "
              "thread (it is loaded there: TDH.VP.FLUSH on the old CPU)",
              lambda data, vm: bool(data["host"]["tasks"] > 0 and data["host"]["cpus"] > 1
                                    and vm["pin"] is None),
              lambda run, vcpu, d: run.preempt(vcpu, True)),
    # --- outcomes: what TDH.VP.ENTER returns, whether kvm_mmu_reload fails -----------------
    *(EventKind(k.key, AT_SEAMCALL, k.doc, _fault_on(k.key), td_only=True,
                details=_DETAILS.get(k.key, ""))
      for k in faults.FAULT_KNOBS if k.key in faults.MODULE_KNOBS),
    EventKind("mmu_reload_fail", AT_ATTEMPT, faults.KNOBS["mmu_reload_fail"].doc,
              _fault_on("mmu_reload_fail")),
)
KINDS: dict[str, EventKind] = {k.name: k for k in EVENT_KINDS}
# kinds that name a CPU rather than a vCPU when placed at an absolute time
CPU_KINDS = frozenset({"host_irq", "host_nmi"})


def detail_choices(kind: str, faults_cfg: Mapping[str, Any]) -> tuple[int, ...]:
    """The values `detail` may take for `kind` in a scenario (the first is the default)."""
    what = KINDS[kind].details
    if what == "sw_errors":
        return tuple(faults.SW_ERRORS)
    if what:
        return tuple(faults_cfg[what])
    return ()


# --- the schedule as data -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Event:
    """One ``[[schedule.event]]``."""

    kind: str
    vcpu: str | None = None   # the vCPU it targets and whose entry segments place it
    entry: int | None = None  # that vCPU's entry segment; None: at `t_ns`
    at: str | None = None     # a landmark, AT_SEAMCALL or AT_ATTEMPT (None: the kind's own)
    delay_ns: int = 0
    t_ns: int | None = None
    detail: int | None = None  # None: the first of the scenario's list
    cpu: int | None = None     # host_irq / host_nmi at t_ns on a CPU, no vCPU

    @property
    def where(self) -> str:
        """The landmark (or outcome point) it is placed at."""
        return self.at if self.at is not None else KINDS[self.kind].at[0]

    def to_data(self) -> dict[str, Any]:
        """As written in a scenario: the keys that differ from their defaults."""
        out: dict[str, Any] = {"kind": self.kind}
        for key in ("vcpu", "cpu", "entry", "at", "t_ns", "detail"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if KINDS[self.kind].where != "landmark":
            out.pop("at", None)
        if self.delay_ns:
            out["delay_ns"] = self.delay_ns
        return out


@dataclass(frozen=True, slots=True)
class Period:
    """One compute period of a scheduled guest: the call that ends it, and its compute
    time (None: the workload's compute_us)."""

    call: str
    compute_ns: int | None = None

    def to_data(self) -> Any:
        if self.compute_ns is None:
            return self.call
        return {"call": self.call, "compute_ns": self.compute_ns}


@dataclass(frozen=True)
class Schedule:
    """A scenario's ``[schedule]``, typed."""

    events: tuple[Event, ...] = ()
    guest: Mapping[str, tuple[Period, ...]] = field(default_factory=dict)
    random_sources: bool = True  # False: only the schedule injects (faults, interrupts)

    def __bool__(self) -> bool:
        return bool(self.events or self.guest or not self.random_sources)

    def to_data(self) -> dict[str, Any]:
        """The ``[schedule]`` table as written in a scenario (defaults left out)."""
        out: dict[str, Any] = {} if self.random_sources else {"random_sources": False}
        if self.events:
            out["event"] = [e.to_data() for e in self.events]
        if self.guest:
            out["guest"] = {name: [p.to_data() for p in periods]
                            for name, periods in self.guest.items()}
        return out


def period_of(item: Any) -> Period:
    """A ``[schedule.guest]`` list item (already checked): a call, or a table."""
    if isinstance(item, str):
        return Period(item)
    return Period(item["call"], item.get("compute_ns"))


def from_data(d: Mapping[str, Any]) -> Schedule:
    """The schedule of a resolved scenario's ``schedule`` table."""
    events = tuple(Event(e["kind"], e["vcpu"], e["entry"], e["at"], e["delay_ns"], e["t_ns"],
                         e["detail"], e["cpu"]) for e in d["event"])
    guest = {name: tuple(period_of(item) for item in items)
             for name, items in d["guest"].items()}
    return Schedule(events, guest, d["random_sources"])


def check_periods(items: Any) -> str | None:
    """A ``[schedule.guest]`` list: TDVMCALL kinds, or ``{call, compute_ns}`` tables."""
    if not items:
        return "needs at least one call"
    for j, item in enumerate(items):
        if isinstance(item, dict):
            extra = set(item) - {"call", "compute_ns"}
            if extra or "call" not in item:
                return (f"item {j}: a table needs `call` and may have `compute_ns` "
                        f"(got {', '.join(sorted(item))})")
            ns = item.get("compute_ns", 0)
            if isinstance(ns, bool) or not isinstance(ns, int) or ns < 0:
                return f"item {j}: compute_ns must be an integer >= 0"
            item = item["call"]
        if item not in TDVMCALL_KINDS:
            return (f"item {j}: {item!r} is not a TDVMCALL kind "
                    f"({', '.join(TDVMCALL_KINDS)})")
    return None
