"""How much work a run is, before it starts: SimPy events, wall-clock time and memory,
estimated from the resolved scenario (vCPUs, duration, workload mix, interrupt rates).

`tdsim run` and `tdsim check` warn above `WARN_WALL_S` and refuse above `REFUSE_WALL_S`
(or when the build alone would not fit in memory) unless given ``--allow-long``; the
estimate also sizes the chunks of simulated time between progress updates.

The estimate is a rate model, not a simulation: each vCPU alternates ``compute_us`` of guest
work with a TD exit costing about `EXIT_OVERHEAD_US`, halts (``mix.hlt``) until its next
timer, and shares the host CPUs with the other vCPUs and host tasks; interrupt sources add
their rates.  `EVENTS_PER_EXIT` and `EVENTS_PER_WALL_S` are calibrated on the shipped
scenarios (tests/test_cli_estimate.py keeps the event estimate within a factor of
`TOLERANCE` of the real count; the wall-clock rate is this machine class's, so the time is a
rough figure: "about 3 minutes", not "182 s").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

EXIT_OVERHEAD_US = 2.5      # KVM + TDX module work per TD exit, entry included (defaults)
EVENTS_PER_EXIT = 1.25      # SimPy events per TD exit (README: about 1.15 on the bench)
EVENTS_PER_WALL_S = 60_000  # SimPy events per wall-clock second, conservative (2026 laptop)
TRACE_SLOWDOWN = 4.0        # a traced run takes about 3.6-3.8 times as long (README)
TRACE_BYTES_PER_EVENT = 400  # a recorded trace event: tuple + fields dict
BYTES_PER_THREAD = 20_000   # a host CPU, vCPU or host task (4.3 kB built, more running)
BUILD_S_PER_THREAD = 120e-6  # building one of them (measured: 4,000 in 0.48 s)
TOLERANCE = 4.0             # the event estimate is within this factor of the real count

WARN_WALL_S = 60.0          # say how long it will take, and go on
REFUSE_WALL_S = 3600.0      # refuse without --allow-long


@dataclass(frozen=True)
class Estimate:
    """The estimated cost of one run (one strategy of one scenario)."""

    events: float        # SimPy events
    td_exits: float
    wall_s: float        # wall-clock seconds, build included
    memory_bytes: float  # model objects, plus the trace when traced
    key: str             # the key path that drives the cost most (named in messages)

    def __add__(self, other: Estimate) -> Estimate:
        key = self.key if self.wall_s >= other.wall_s else other.key
        return Estimate(self.events + other.events, self.td_exits + other.td_exits,
                        self.wall_s + other.wall_s,
                        max(self.memory_bytes, other.memory_bytes), key)


def estimate(data: dict[str, Any], traced: bool = False) -> Estimate:
    """The estimated cost of running the resolved scenario `data` once (one strategy)."""
    sim, host = data["sim"], data["host"]
    duration_s = sim["duration_us"] / 1e6
    cpus = host["cpus"]
    demand = 0.0      # CPUs the vCPUs and tasks would keep busy
    exits_per_s = 0.0
    other_per_s = host["tick_hz"] * cpus + host["nmi_hz"] * cpus
    program_exits = 0.0
    vcpus = 0
    for vm in data["vm"]:
        n = vm["vcpus"]
        vcpus += n
        wl, intr, sept = vm["workload"], vm["interrupts"], vm["sept"]
        timer_hz = wl["timer_hz"]
        irq_hz = timer_hz + intr["ipi_hz"] + intr["device_irq_hz"] + intr["nmi_hz"] \
            + intr["tlb_flush_hz"] + sept["private_fault_hz"] + wl["tsc_aux_read_hz"]
        exits_per_s += n * irq_hz
        other_per_s += n * irq_hz + sept["zap_hz"] * n
        if wl["program"]:
            program_exits += n * _program_steps(wl["program"])
            continue
        busy_us = wl["compute_us"] + EXIT_OVERHEAD_US
        mix = wl["mix"]
        total = sum(mix.values()) or 1.0
        halt_share = mix.get("hlt", 0.0) / total
        halt_us = halt_share * (0.5e6 / timer_hz) if timer_hz > 0 else 0.0
        exits_per_s += n * 1e6 / (busy_us + halt_us)
        demand += n * busy_us / (busy_us + halt_us)
    if host["tasks"]:
        cycle_us = host["task_run_us"] + host["task_sleep_us"]
        other_per_s += host["tasks"] * 2e6 / cycle_us
        demand += host["tasks"] * host["task_run_us"] / cycle_us
    if demand > cpus:  # overcommitted: the vCPUs get only their share of the CPUs
        exits_per_s *= cpus / demand
    faults = data["faults"]
    other_per_s += vcpus * sum(v for k, v in faults.items()
                               if k.endswith("_hz") and isinstance(v, (int, float)))
    td_exits = exits_per_s * duration_s + program_exits
    events = EVENTS_PER_EXIT * td_exits + other_per_s * duration_s
    threads = cpus + vcpus + host["tasks"]
    wall_s = events / EVENTS_PER_WALL_S * (TRACE_SLOWDOWN if traced else 1.0) \
        + threads * BUILD_S_PER_THREAD
    memory = threads * BYTES_PER_THREAD + (events * TRACE_BYTES_PER_EVENT if traced else 0.0)
    key = _driver(data, threads, events)
    return Estimate(events, td_exits, wall_s, memory, key)


def _driver(data: dict[str, Any], threads: int, events: float) -> str:
    """The key path to name when the estimate is too high."""
    if threads * BUILD_S_PER_THREAD * EVENTS_PER_WALL_S > events:
        vcpus = [vm["vcpus"] for vm in data["vm"]]
        if data["host"]["cpus"] >= max(max(vcpus), data["host"]["tasks"]):
            return "host.cpus"
        if data["host"]["tasks"] > max(vcpus):
            return "host.tasks"
        return f"vm[{vcpus.index(max(vcpus))}].vcpus"
    return "sim.duration_us"


def _program_steps(steps: list[dict[str, Any]]) -> float:
    """TD exits a scripted guest's program makes at most (loops expanded)."""
    n = 0.0
    for step in steps:
        if step.get("op") == "loop":
            n += step.get("count", 1) * _program_steps(step.get("steps", []))
        elif step.get("op") != "compute":
            n += 1
    return n


def physical_memory() -> float:
    """Bytes of RAM on this machine (infinity when the OS does not say)."""
    try:
        import os

        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return math.inf


def duration_text(seconds: float) -> str:
    """A rough duration for a person: ``40 s``, ``3 min``, ``2.5 h``, ``4 days``, ``300 years``."""
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds < 2 * 365 * 86400:
        return f"{seconds / 86400:.0f} days"
    years = seconds / (365 * 86400)
    return f"{years:,.0f} years" if years < 1e6 else f"{years:.1e} years"


def size_text(n: float) -> str:
    """A byte count for a person: ``512 MiB``, ``3.2 GiB``, ``7e+12 GiB``."""
    gib = n / 2**30
    if gib < 1:
        return f"{n / 2**20:.0f} MiB"
    return f"{gib:.1f} GiB" if gib < 1e6 else f"{gib:.1e} GiB"
