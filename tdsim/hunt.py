"""``tdsim hunt``: search a scenario's schedules for a run that breaks an oracle, and shrink the
counterexample to a minimal scripted scenario (docs/hunt.md).

The search space comes from the scenario (`Space`): the kinds of injected event its knobs
switch on (`tdsim.schedule.EVENT_KINDS`: its ``[faults]``, interrupt sources, host tasks,
SEPT zaps), its TDs and their vCPUs, the TDVMCALLs of each guest's mix.  A *candidate* is a
small scripted scenario of that space: the scenario with every random source of injected
events switched off, fewer vCPUs, explicit guest calls, and a few events placed at the
run-loop landmarks of chosen entries (`tdsim.schedule`).  Each candidate is one short
deterministic run (`tdsim.choices` observes where its events land and which strategy hook
runs next), judged by the oracles of `tdsim.findings`.

Two ways to search:

* ``random``: candidates drawn from a stream seeded by the hunt's seed, few events and early
  entries first;
* ``exhaustive``: every schedule of up to ``depth`` events over every landing position (vCPU
  x kind x entry x landmark) of a fixed workload, fewest events first, with the share of
  the space covered.

A counterexample is then shrunk (`shrink`): delta debugging on its events, then each part
made simpler -- fewer vCPUs and VMs, no guest timer, earlier entries and landmarks, no
delays, the simplest guest calls -- keeping each step that still breaks the same oracle.  The
result is written as an ordinary scenario (`tdsim.hunt_report`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from . import arch
from .choices import Runtime
from .findings import NAMES
from .hunt_space import Candidate, HuntResult, Space, trim, unique, vcpu_index
from .rng import stream
from .scenario import Scenario, ScenarioError
from .schedule import KINDS, LANDMARKS, Event, Period
from .sim import Simulation

MODES = ("random", "exhaustive")
MIN_SHRINK_S = 10.0                   # shrinking may run this much past the budget


@dataclass
class Outcome:
    """What one candidate run gave."""

    hit: dict[str, Any] | None  # the first violation of a hunted oracle
    landings: list[Any]
    cells: set[tuple[str, str, str]]


@dataclass
class Progress:
    """How the hunt is going (passed to the progress callback)."""

    phase: str          # "search", "shrink", "done"
    runs: int
    elapsed_s: float
    budget_s: float
    best: str           # the best candidate so far, in words ("" = none yet)
    covered: int
    space_done: int = 0   # exhaustive: schedules tried
    space_total: int = 0  # exhaustive: schedules in the space


# --- running candidates -------------------------------------------------------------------------
class Runner:
    """Runs candidates of a space and keeps count."""

    def __init__(self, space: Space, variants: Sequence[str] = ()) -> None:
        self.space = space
        self.variants = tuple(variants)
        self.runs = 0

    def __call__(self, cand: Candidate) -> Outcome:
        self.runs += 1
        space = self.space
        scenario = space.scenario_of(cand)
        hit: list[dict[str, Any]] = []
        cut: list[bool] = []

        def done() -> None:  # every vCPU went far enough: stop (unless a hit stops it)
            if not hit and not cut:
                cut.append(True)
                sim.request_stop()

        runtime = Runtime(observe=True, stop_after=space.stop_after, on_done=done)
        sim = Simulation(scenario, variants=self.variants, choices=runtime)
        findings = sim.model.findings
        record = findings.record
        oracles = space.oracles

        def record_and_stop(name: str, cpu: int, vcpu: str | None, detail: str,
                            cause: tuple[int, str] | None = None,
                            msr: int | None = None) -> None:
            record(name, cpu, vcpu, detail, cause, msr)
            if name not in oracles or hit:
                return
            found: dict[str, Any] = {"invariant": name, "t_ns": sim.model.env.now, "cpu": cpu,
                                     "vcpu": vcpu, "detail": detail, "at_end": bool(cut)}
            if msr is not None:
                found["msr"] = arch.MSR_NAMES[msr]
            if cause is not None:
                found["cause"] = {"t_ns": cause[0], "what": cause[1]}
            hit.append(found)
            if not cut:
                sim.request_stop()
            # (after a cut come the stragglers of its instant and the end-of-run checks at
            # that instant: kept only if the reproducer, a run of its own, sees them too)

        findings.record = record_and_stop  # type: ignore[method-assign]
        sim.run()
        return Outcome(hit[0] if hit else None, runtime.landings, runtime.coverage())


# --- shrinking ------------------------------------------------------------------------------------
def shrink(cand: Candidate, oracle: str, run: Callable[[Candidate], Outcome],
           space: Space, deadline: float) -> tuple[Candidate, Outcome]:
    """The simplest candidate reachable from `cand` by steps that each still break
    `oracle` (greedy, to a fixed point or the deadline)."""
    best = run(cand)
    assert best.hit is not None

    def still(c: Candidate) -> Outcome | None:
        out = run(c)
        return out if out.hit is not None and out.hit["invariant"] == oracle else None

    progress = True
    while progress and time.monotonic() < deadline:
        progress = False
        for step in _steps(cand, space):
            if time.monotonic() >= deadline:
                break
            if step.size > cand.size:
                continue
            out = still(step)
            if out is not None:
                cand, best, progress = step, out, True
                break
    return cand, best


def _steps(c: Candidate, space: Space) -> Iterator[Candidate]:
    """Simpler variants of `c`, the biggest simplifications first."""
    events = list(c.events)
    # delta debugging: leave out chunks of events, halves first
    n = len(events)
    size = n
    while size >= 1:
        for i in range(0, n, size):
            yield replace(c, events=tuple(events[:i] + events[i + size:]))
        size //= 2
    # the events of one vCPU moved to a lower-numbered vCPU of its VM, with its guest
    named = {e.vcpu for e in events}
    for v in sorted(str(x) for x in named if x is not None):
        vm_name = v.rsplit(".vcpu", 1)[0]
        for w in (f"{vm_name}.vcpu{i}" for i in range(vcpu_index(v))):
            if w not in named:
                yield _moved(c, v, w)
                break
    # fewer VMs and vCPUs (those no event names)
    for i, (vm, count) in enumerate(zip(space.vms, c.vcpus, strict=True)):
        if count and not any(str(v).startswith(vm.name + ".") for v in named) and sum(
                1 for x in c.vcpus if x) > 1:
            yield _with_vcpus(c, i, 0, vm.name)
        for k in range(1, count):
            if not any(v is not None and v.startswith(vm.name + ".vcpu")
                       and vcpu_index(v) >= k for v in named):
                yield _with_vcpus(c, i, k, vm.name)
    if c.timers and not any(p.call == "hlt" for _, ps in c.guest for p in ps):
        yield replace(c, timers=False)
    for cpus in range(space.min_cpus, c.cpus):
        yield replace(c, cpus=cpus)
    # all events earlier together (one at a time may not do: they act in concert)
    first = min((e.entry for e in events if e.entry is not None), default=0)
    for d in range(first, 0, -1):
        yield replace(c, events=tuple(replace(e, entry=e.entry - d) if e.entry is not None
                                      else e for e in events))
    # each event simpler: its vCPU, entry, kind, landmark, delay, detail
    for i, e in enumerate(events):
        owner = next((vm for vm in space.vms if str(e.vcpu).startswith(vm.name + ".vcpu")),
                     None)
        for simpler in _simpler_events(e, owner.kinds if owner is not None else ()):
            yield replace(c, events=unique(events[:i] + [simpler] + events[i + 1:]))
    # the guests: fewer periods, default compute times, the simplest calls
    for j, (name, periods) in enumerate(c.guest):
        vm = next(vm for vm in space.vms if name.startswith(vm.name + ".vcpu"))
        for m in range(1, len(periods)):
            yield _with_guest(c, j, periods[:m])
        for k in range(len(periods) - 1):
            yield _with_guest(c, j, periods[:k] + periods[k + 1:])
        for k, p in enumerate(periods):
            if p.compute_ns is not None:
                yield _with_guest(c, j, periods[:k] + (Period(p.call),) + periods[k + 1:])
            simplest = vm.calls[0] if vm.calls else p.call
            if p.call != simplest:
                yield _with_guest(c, j, periods[:k] + (Period(simplest, p.compute_ns),)
                                  + periods[k + 1:])


def _simpler_events(e: Event, kinds: Sequence[str]) -> Iterator[Event]:
    if e.vcpu is not None and not e.vcpu.endswith(".vcpu0"):
        yield replace(e, vcpu=e.vcpu.rsplit("vcpu", 1)[0] + "vcpu0")
    for entry in range(e.entry or 0):
        yield replace(e, entry=entry)
    where = KINDS[e.kind].where
    for kind in kinds[:kinds.index(e.kind)] if e.kind in kinds else ():
        if KINDS[kind].where == where:
            yield replace(e, kind=kind, detail=None)
    if e.delay_ns:
        yield replace(e, delay_ns=0)
    if e.at in LANDMARKS:
        for at in LANDMARKS[:LANDMARKS.index(e.at)]:
            yield replace(e, at=at)
    if e.detail is not None:
        yield replace(e, detail=None)


def _with_vcpus(c: Candidate, i: int, k: int, vm: str) -> Candidate:
    """`c` with `k` vCPUs in VM `i` (named `vm`): the guests of the others go too."""
    vcpus = c.vcpus[:i] + (k,) + c.vcpus[i + 1:]
    kept = tuple((name, p) for name, p in c.guest
                 if not (name.startswith(vm + ".vcpu") and vcpu_index(name) >= k))
    return replace(c, vcpus=vcpus, guest=kept)


def _moved(c: Candidate, v: str, w: str) -> Candidate:
    """`c` with vCPU `v`'s events and guest given to vCPU `w` (which has no events)."""
    guest = dict(c.guest)
    if v in guest:
        guest[w] = guest.pop(v)
    events = [replace(e, vcpu=w) if e.vcpu == v else e for e in c.events]
    return replace(c, events=unique(events), guest=tuple(sorted(guest.items())))


def _with_guest(c: Candidate, j: int, periods: tuple[Period, ...]) -> Candidate:
    name = c.guest[j][0]
    return replace(c, guest=c.guest[:j] + ((name, trim(periods)),) + c.guest[j + 1:])


# --- the hunt -----------------------------------------------------------------------------------
def hunt(scenario: Scenario, strategy: str | None = None, oracles: Sequence[str] = (),
         budget_s: float = 60.0, seed: int = 1, mode: str = "random", entries: int = 8,
         max_events: int = 6, depth: int = 2, vcpus: int | None = None,
         max_runs: int | None = None, variants: Sequence[str] = (),
         progress: Callable[[Progress], None] | None = None) -> HuntResult:
    """Search the schedules `scenario` allows for a run that breaks one of `oracles` (by
    default all of `tdsim.findings` but those the scenario's ``[expect] violations_must``
    declares) under `strategy` (default: the scenario's
    ``kvm.host_state``; a built-in name or ``path/file.py:Class``), for at most about
    `budget_s` seconds (and `max_runs` runs, if given), and shrink what it finds (module
    docstring).  Deterministic in its arguments as long as the budget is not what ends it
    (it is wall-clock time; `max_runs` is not).  `variants`: deliberately wrong kernel
    variants to install (tests only, `tdsim.variants`)."""
    from .hunt_report import explain_violation, reproducer

    if mode not in MODES:
        raise ScenarioError("--mode", repr(mode), f"not one of {', '.join(MODES)}")
    unknown = [o for o in oracles if o not in NAMES]
    if unknown:
        raise ScenarioError("--oracle", unknown[0], "not an oracle or invariant tdsim checks "
                            f"(known: {', '.join(sorted(NAMES))})")
    if strategy is not None:
        scenario = scenario.replace([f"kvm.host_state={strategy}"])
    strategy_name = scenario.data["kvm"]["host_state"]
    space = Space(scenario, oracles, entries, vcpus if mode == "random" else (vcpus or 1))
    if not space.searchable:
        raise ScenarioError(scenario.path, "vm", "every guest runs a scripted program: "
                            "tdsim hunt searches what statistical guests (workload.mix) do")
    run = Runner(space, variants)
    result = HuntResult(scenario, strategy_name, tuple(sorted(space.oracles)), mode, seed,
                        0, 0.0, None, set(), space.kinds, variants=tuple(variants))
    t0 = time.monotonic()
    deadline = t0 + budget_s
    best = ""
    last = 0.0

    def report(phase: str) -> None:
        nonlocal last
        now = time.monotonic()
        if progress is not None and (phase != "search" or now - last >= 0.2):
            last = now
            progress(Progress(phase, run.runs, now - t0, budget_s, best, len(result.cells),
                              result.space_done, result.space_total))

    candidates = (_random_candidates(space, seed, max_events) if mode == "random"
                  else _exhaustive_candidates(space, seed, vcpus or 1, depth, result))
    try:
        for cand in candidates:
            if time.monotonic() >= deadline or (max_runs and run.runs >= max_runs):
                break
            out = run(cand)
            result.cells |= out.cells
            if mode == "exhaustive":
                result.space_done += 1
            if out.hit is None:
                report("search")
                continue
            found_s = time.monotonic() - t0
            oracle = out.hit["invariant"]
            best = f"{len(cand.events)} events ({oracle})"
            report("shrink")
            searched = run.runs
            small, out = shrink(cand, oracle, run, space,
                                max(deadline, time.monotonic() + MIN_SHRINK_S))
            assert out.hit is not None
            result.cells |= out.cells
            result.oracle = oracle
            result.candidate = small
            result.reproducer = reproducer(space, small, out.hit, result)
            if result.reproducer is None:
                # an end-of-run oracle at the instant a run was cut short, which a run of
                # its own does not see: not a counterexample
                result.extra["not_reproduced"] = result.extra.get("not_reproduced", 0) + 1
                result.oracle = result.candidate = None
                best = ""
                continue
            result.found_s = found_s
            result.shrink_runs = run.runs - searched
            result.violation, result.explanation = explain_violation(result)
            break
    except KeyboardInterrupt:  # Ctrl-C: what was covered so far is still reported
        result.interrupted = True
    result.runs = run.runs
    result.elapsed_s = time.monotonic() - t0
    report("done")
    return result


def _random_candidates(space: Space, seed: int, max_events: int) -> Iterator[Candidate]:
    rng = stream(seed, "hunt.random")
    while True:
        yield space.random_candidate(rng, max_events)


def _exhaustive_candidates(space: Space, seed: int, vcpus: int, depth: int,
                           result: HuntResult) -> Iterator[Candidate]:
    """Every schedule of 0..`depth` events over the atoms of the space, fewest events first,
    then by the latest entry they use (all schedules within the first entries come before
    any that reaches a later one)."""
    base = space.base_candidate(seed, vcpus)
    atoms = space.atoms(base)
    result.space_total = sum(math.comb(len(atoms), k) for k in range(0, depth + 1))
    by_entry = [[a for a in atoms if a.entry == e] for e in range(space.entries)]
    for k in range(0, depth + 1):
        for combo in _combos_by_last_entry(by_entry, k):
            events = unique(list(combo))
            if len(events) < k:
                result.space_done += 1  # two outcomes at one entry: not a schedule
                continue
            yield replace(base, events=events)


def _combos_by_last_entry(by_entry: list[list[Event]], k: int) -> Iterator[tuple[Event, ...]]:
    """The k-subsets of the atoms, those whose latest entry is 0 first, then 1, ...: for
    entry e, j >= 1 atoms of entry e with k - j of the earlier entries."""
    if k == 0:
        yield ()
        return
    before: list[Event] = []
    for at_e in by_entry:
        for j in range(1, k + 1):
            for last in itertools.combinations(at_e, j):
                for first in itertools.combinations(before, k - j):
                    yield first + last
        before += at_e
