"""The space a hunt searches (`tdsim.hunt`), and the scripted scenarios of its candidates.

A scenario's knobs give the space: the kinds of injected event it switches on
(`tdsim.schedule.EVENT_KINDS`), its VMs and their vCPUs, the TDVMCALLs of each statistical
guest's mix.  A `Candidate` is one point of it -- fewer vCPUs, a few events placed at entry
landmarks, explicit guest calls -- and `Space.scenario_of` its scenario: the hunted one with
every random source of injected events off (`_sources_off`) and the candidate as its
``[schedule]``; and `HuntResult`, what a hunt gives.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .findings import NAMES
from .rng import stream
from .scenario import Scenario, scenario_from_dict
from .schedule import AT_SEAMCALL, EVENT_KINDS, KINDS, LANDMARKS, Event, Period, detail_choices

DELAYS_NS = (100, 500, 2000, 10000)  # the non-zero delays a random event may take


@dataclass(frozen=True)
class VmSpace:
    """One VM of the hunted scenario: its vCPUs, and (for a TD) what may happen to them."""

    name: str
    flavor: str
    vcpus: int                  # at most, in a candidate
    kinds: tuple[str, ...]      # injectable event kinds (TDs only)
    calls: tuple[str, ...]      # the TDVMCALL kinds of its mix, simplest first
    weights: tuple[float, ...]
    compute_ns: int
    timer: bool                 # it has a guest timer (a halted vCPU can be woken)


@dataclass(frozen=True)
class Candidate:
    """One scripted scenario of the space."""

    vcpus: tuple[int, ...]                         # per VM of the scenario; 0 = left out
    events: tuple[Event, ...]
    guest: tuple[tuple[str, tuple[Period, ...]], ...]  # per TD vCPU in the candidate
    timers: bool                                   # the guests' timers stay on
    cpus: int                                      # host CPUs

    @property
    def size(self) -> tuple[int, int, int, int]:
        """How big it is (smaller is simpler): events, vCPUs, guest periods listed, CPUs."""
        return (len(self.events), sum(self.vcpus), sum(len(p) for _, p in self.guest),
                self.cpus)


@dataclass
class HuntResult:
    """The outcome of one hunt (`hunt`)."""

    scenario: Scenario            # the hunted scenario (strategy applied)
    strategy: str
    oracles: tuple[str, ...]
    mode: str
    seed: int
    runs: int
    elapsed_s: float
    found_s: float | None         # when the first counterexample was found
    cells: set[tuple[str, str, str]]
    kinds: tuple[str, ...]
    space_done: int = 0
    space_total: int = 0
    variants: tuple[str, ...] = ()  # wrong kernel variants installed (tests only)
    oracle: str | None = None     # the oracle the counterexample breaks
    candidate: Candidate | None = None
    shrink_runs: int = 0
    reproducer: dict[str, Any] | None = None  # scenario data, TOML-able
    violation: dict[str, Any] | None = None
    explanation: str = ""
    interrupted: bool = False     # stopped by Ctrl-C
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return self.reproducer is not None


# --- the space --------------------------------------------------------------------------------
class Space:
    """The schedules a scenario allows, and the scripted scenarios of its candidates."""

    def __init__(self, scenario: Scenario, oracles: Sequence[str], entries: int,
                 max_vcpus: int | None, validate: bool = False) -> None:
        data = scenario.data
        self.validate = validate
        self.scenario = scenario
        # by default every oracle but the findings the scenario declares (`[expect]
        # violations_must`: known, and `tdsim check` expects them)
        self.oracles = (frozenset(oracles) if oracles
                        else NAMES - set(data["expect"]["violations_must"]))
        self.entries = entries
        self.faults = data["faults"]
        vms = []
        for vm in data["vm"]:
            wl = vm["workload"]
            mix = wl["mix"]
            calls = tuple(k for k in mix if mix[k] > 0) if not wl["program"] else ()
            kinds = tuple(k.name for k in EVENT_KINDS if k.enabled(data, vm) and not (
                k.td_only and vm["flavor"] != "tdx")) if not wl["program"] else ()
            n = vm["vcpus"] if max_vcpus is None else min(vm["vcpus"], max_vcpus)
            vms.append(VmSpace(vm["name"], vm["flavor"], n, kinds, calls,
                               tuple(mix[k] for k in calls), round(wl["compute_us"] * 1000),
                               wl["timer_hz"] > 0))
        self.vms = tuple(vms)
        self.kinds = tuple(k.name for k in EVENT_KINDS
                           if any(k.name in vm.kinds for vm in self.vms))
        self.base = _sources_off(data)
        self.cpus = data["host"]["cpus"]
        self.min_cpus = 1 + max((max(vm["pin"]) for vm in data["vm"] if vm["pin"]), default=0)
        # A run stops once every vCPU has begun `stop_after` entry segments (the events are
        # placed in the first `entries`, the rest lets their consequences happen); the
        # duration bounds runs whose vCPUs stop or halt for long (end-of-run oracles are
        # judged only in runs that reach it).
        self.stop_after = entries + 4
        slowest = max((vm.compute_ns for vm in self.vms), default=10_000)
        timer = max((1e9 / vm["workload"]["timer_hz"] for vm in data["vm"]
                     if vm["workload"]["timer_hz"] > 0), default=0.0)
        self.horizon_us = math.ceil((self.stop_after * (slowest + 30_000) + 2 * timer) / 1000)

    @property
    def searchable(self) -> bool:
        """Some vCPU can be scripted (a statistical guest)."""
        return any(vm.calls for vm in self.vms)

    def scenario_of(self, cand: Candidate, duration_us: float | None = None) -> Scenario:
        """The scripted scenario of `cand`.  Built resolved from the resolved base (valid by
        construction); with ``validate`` it goes through the scenario checks like a file."""
        data = self.data_of(cand, duration_us)
        if self.validate:
            return scenario_from_dict(data, name="<hunt>")
        return Scenario("<hunt>", data)

    def data_of(self, cand: Candidate, duration_us: float | None = None) -> dict[str, Any]:
        """The resolved data of `cand`'s scenario (shares the base's unchanged tables)."""
        base = self.base
        data = dict(base)
        data["sim"] = {**base["sim"], "duration_us": float(duration_us or self.horizon_us)}
        data["host"] = {**base["host"], "cpus": cand.cpus}
        vms = []
        for vm0, n in zip(base["vm"], cand.vcpus, strict=True):
            if not n:
                continue
            vm = dict(vm0)
            vm["vcpus"] = n
            if vm["pin"] is not None:
                vm["pin"] = vm["pin"][:n]
            intr = vm["interrupts"] = dict(vm["interrupts"])
            intr["device_irq_vcpus"] = [v for v in intr["device_irq_vcpus"] if v < n] or [0]
            if not cand.timers and vm["workload"]["timer_hz"] > 0:
                wl = vm["workload"] = dict(vm["workload"])
                wl["timer_hz"] = 0.0
                mix = wl["mix"] = dict(wl["mix"])
                if any(w > 0 for k, w in mix.items() if k != "hlt"):
                    mix["hlt"] = 0.0
            vms.append(vm)
        data["vm"] = vms
        data["schedule"] = {"random_sources": True,
                            "event": [_event_data(e) for e in cand.events],
                            "guest": {name: [p.to_data() for p in periods]
                                      for name, periods in cand.guest}}
        return data

    def vcpu_names(self, cand: Candidate) -> list[tuple[VmSpace, str]]:
        """The vCPUs of a candidate with statistical guests (events target those whose VM
        has kinds)."""
        return [(vm, f"{vm.name}.vcpu{i}") for vm, n in zip(self.vms, cand.vcpus, strict=True)
                if vm.calls for i in range(n)]

    # --- random candidates ------------------------------------------------------------------
    def random_candidate(self, rng: random.Random, max_events: int) -> Candidate:
        vcpus = tuple(1 if rng.random() < 0.5 else rng.randint(1, vm.vcpus)
                      for vm in self.vms)
        timers = rng.random() < 0.5
        cand = Candidate(vcpus, (), (), timers, self.cpus)
        targets = [(vm, name) for vm, name in self.vcpu_names(cand) if vm.kinds]
        n_events = min(max_events, 1 + int(rng.expovariate(1 / 1.2)))
        events = []
        for _ in range(n_events if targets else 0):
            vm, name = rng.choice(targets)
            events.append(self.random_event(rng, vm, name))
        return replace(cand, events=unique(events), guest=self.random_guest(rng, cand))

    def random_event(self, rng: random.Random, vm: VmSpace, vcpu: str) -> Event:
        kind = KINDS[rng.choice(vm.kinds)]
        entry = min(rng.randrange(self.entries), rng.randrange(self.entries))
        details = detail_choices(kind.name, self.faults)
        detail = rng.choice(details) if len(details) > 1 else None
        if kind.where != "landmark":
            return Event(kind.name, vcpu, entry, detail=detail)
        delay = 0 if rng.random() < 0.75 else rng.choice(DELAYS_NS)
        return Event(kind.name, vcpu, entry, rng.choice(LANDMARKS), delay, detail=detail)

    def random_guest(self, rng: random.Random, cand: Candidate
                     ) -> tuple[tuple[str, tuple[Period, ...]], ...]:
        out = []
        for vm, name in self.vcpu_names(cand):
            calls = [c for c in vm.calls if cand.timers or c != "hlt"]
            weights = [w for c, w in zip(vm.calls, vm.weights, strict=True)
                       if cand.timers or c != "hlt"]
            if not calls:
                continue
            periods = []
            for c in rng.choices(calls, weights, k=self.entries + 2):
                compute = None
                if rng.random() < 0.15:
                    compute = rng.choice((vm.compute_ns // 4, vm.compute_ns * 3))
                periods.append(Period(c, compute))
            out.append((name, trim(tuple(periods))))
        return tuple(out)

    # --- the exhaustive space ---------------------------------------------------------------
    def base_candidate(self, seed: int, vcpus: int) -> Candidate:
        """The fixed workload of an exhaustive hunt: `vcpus` per TD, calls drawn once from
        each mix (a stream of the hunt's seed), no event."""
        counts = tuple(min(vcpus, vm.vcpus) for vm in self.vms)
        cand = Candidate(counts, (), (), True, self.cpus)
        rng = stream(seed, "hunt.exhaustive.guest")
        return replace(cand, guest=tuple(
            (name, trim(tuple(Period(c) for c in rng.choices(
                vm.calls, vm.weights, k=self.entries + 2))))
            for vm, name in self.vcpu_names(cand) if vm.calls))

    def atoms(self, cand: Candidate) -> list[Event]:
        """Every single event of the exhaustive space: vCPU x kind x entry x landmark (x
        detail), earliest entries first."""
        out = []
        for entry in range(self.entries):
            for vm, name in self.vcpu_names(cand):
                for kname in vm.kinds:
                    kind = KINDS[kname]
                    details: Sequence[int | None] = detail_choices(kname, self.faults) or (None,)
                    if len(details) == 1:
                        details = (None,)
                    for detail in details:
                        if kind.where != "landmark":
                            out.append(Event(kname, name, entry, detail=detail))
                        else:
                            out.extend(Event(kname, name, entry, at, detail=detail)
                                       for at in LANDMARKS)
        return out


def _sources_off(data: dict[str, Any]) -> dict[str, Any]:
    """The scenario with every random source of injected events off (the schedule injects
    them), one strategy, no expectations, no warm-up."""
    from .faults import FAULT_KNOBS

    d = copy.deepcopy(data)
    for knob in FAULT_KNOBS:
        d["faults"][knob.key] = 0.0
    d["host"]["tick_hz"] = 0.0
    d["host"]["nmi_hz"] = 0.0
    d["host"]["tasks"] = 0
    d["kvm"]["compare"] = []
    d["sim"]["warmup_us"] = 0.0
    d.pop("expect", None)
    for vm in d["vm"]:
        intr = vm["interrupts"]
        for key in ("nmi_hz", "device_irq_hz", "tlb_flush_hz", "hlt_irqs_off_p"):
            intr[key] = 0.0
        vm["sept"]["zap_hz"] = 0.0
        if vm["flavor"] == "tdx" and not vm["workload"]["program"]:
            vm["workload"]["compute_dist"] = "fixed"
    d.pop("schedule", None)
    return d


def _event_data(e: Event) -> dict[str, Any]:
    return {"kind": e.kind, "vcpu": e.vcpu, "entry": e.entry, "at": e.at,
            "delay_ns": e.delay_ns, "t_ns": e.t_ns, "detail": e.detail, "cpu": e.cpu}


def trim(periods: tuple[Period, ...]) -> tuple[Period, ...]:
    """Drop trailing repeats (after the last period, the last one repeats)."""
    n = len(periods)
    while n > 1 and periods[n - 1] == periods[n - 2]:
        n -= 1
    return periods[:n]


def unique(events: list[Event]) -> tuple[Event, ...]:
    """Events in placement order, one outcome per entry (a later duplicate is dropped)."""
    seen = set()
    out = []
    for e in sorted(events, key=lambda e: (e.entry or 0, str(e.vcpu), LANDMARK_ORDER.get(
            e.where, -1), e.kind)):
        key = (e.vcpu, e.entry, e.where) if e.where in OUTCOME_POINTS else e
        if key in seen:
            continue
        seen.add(key)
        out.append(e)
    return tuple(out)


LANDMARK_ORDER = {AT_SEAMCALL: -2, "attempt": -3, **{at: i for i, at in enumerate(LANDMARKS)}}
OUTCOME_POINTS = (AT_SEAMCALL, "attempt")


def vcpu_index(vcpu: str) -> int:
    """The vCPU index in a name (``td0.vcpu3`` -> 3)."""
    return int(vcpu.rsplit("vcpu", 1)[1])
