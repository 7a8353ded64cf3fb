"""Run a scenario: build the model, simulate, collect the result.

Lifecycle (named phases, as in desmod): build (`tdsim.build`: host CPUs, KVM, the TDX module,
VMs, vCPU threads, host tasks) -> simulate (SimPy until ``sim.duration_us``) -> collect (flush
the stretches in progress, check that each CPU's time adds up, aggregate counters into flat
dotted metrics, derive the sums).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from simpy.core import StopSimulation

from . import _compiled, sept
from ._version import __version__
from .build import Model, build
from .config import from_data
from .host import CATEGORY_NAMES, IDLE, ProcessGenerator
from .metrics import undeclared
from .program import ScriptedGuest
from .strategies import load_strategy

if TYPE_CHECKING:
    from .choices import Runtime
    from .scenario import Scenario
    from .trace import Tracer

_STOPPED = object()  # the value of the event `Simulation.request_stop` schedules

# Totals the model does not count itself: each is the sum of its parts, derived here.
_SUMS = (("exits.reason.", "exits"), ("late_abort.", "late_abort"),
         ("userspace_exits.reason.", "userspace_exits"), ("vcpu_put.cause.", "vcpu_put"),
         ("kvm_bug.", "kvm_bug"), ("kernel_warn.", "kernel_warn"))


def with_sums(stat: dict[str, int]) -> dict[str, int]:
    """`stat` with its derived totals: exits, late_abort, userspace_exits, vcpu_put,
    kvm_bug, kernel_warn and seamcall.<LEAF> (the sum over its statuses)."""
    out = dict(stat)
    for key, value in stat.items():
        for prefix, total in _SUMS:
            if key.startswith(prefix):
                out[total] = out.get(total, 0) + value
                break
        else:
            if key.startswith("seamcall.") and ".status." in key:
                leaf = key[:key.index(".status.")]
                out[leaf] = out.get(leaf, 0) + value
    return out


class Simulation:
    """One run of one scenario."""

    def __init__(self, scenario: Scenario, tracer: Tracer | None = None,
                 variants: list[str] | tuple[str, ...] = (),
                 choices: Runtime | None = None) -> None:
        self.scenario = scenario
        self.config = from_data(scenario.data)
        self.seed = self.config.sim.seed
        self.duration_ns = self.config.sim.duration_ns
        self.warmup_ns = self.config.sim.warmup_ns
        self.tracer = tracer
        # `choices`: a recording or a search at the run's choice points (tdsim.choices)
        self.model: Model = build(self.config,
                                  load_strategy(self.config.kvm.host_state), tracer, choices)
        if variants:  # deliberately wrong kernel variants, for tests (tdsim.variants)
            from .variants import apply
            apply(self.model, variants)
        self._warm: dict[str, Any] | None = None
        self._control_events = 0  # chunk boundaries and stops: not the model's events
        self._cpu_s = 0.0  # process CPU time of the simulation loop

    # the built components, for tests and tools that look inside a run
    @property
    def env(self) -> Any:
        return self.model.env

    @property
    def cpus(self) -> list[Any]:
        return self.model.cpus

    @property
    def vcpus(self) -> list[Any]:
        return self.model.vcpus

    @property
    def vms(self) -> list[Any]:
        return self.model.vms

    @property
    def irq(self) -> Any:
        return self.model.irq

    @property
    def sched(self) -> Any:
        return self.model.sched

    @property
    def kvm(self) -> Any:
        return self.model.kvm

    @property
    def module(self) -> Any:
        return self.model.module

    @property
    def vmm(self) -> Any:
        return self.model.vmm

    @property
    def findings(self) -> Any:
        return self.model.findings

    @property
    def faults(self) -> Any:
        return self.model.faults

    @property
    def host_stat(self) -> Any:
        return self.model.host_stat

    def _warmup(self) -> ProcessGenerator:
        """At the end of the warm-up, snapshot every counter and CPU time; `_collect`
        subtracts the snapshot."""
        env = self.model.env
        yield env.timeout(self.warmup_ns)
        now = env.now
        for cpu in self.model.cpus:
            curr = cpu.curr
            if curr is None:
                cpu.ns[IDLE] += now - cpu.idle_since
                cpu.idle_since = now
            elif curr.seg_t0 >= 0:
                curr.split_seg(now)
        self._warm = {
            "host": dict(self.model.host_stat),
            "vcpu": [dict(v.stat) for v in self.model.vcpus],
            "cpu": [list(c.ns) for c in self.model.cpus],
        }

    def run(self, progress: Callable[[int, int], None] | None = None,
            chunk_ns: int | None = None) -> Result:
        """Simulate, then collect.  `progress`/`chunk_ns`: see `_simulate`."""
        model = self.model
        model.start()
        if 0 < self.warmup_ns < self.duration_ns:
            model.env.process(self._warmup())
        model.start_sources()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        partial = self._simulate(progress, chunk_ns)
        wall = time.perf_counter() - wall0
        self._cpu_s = time.process_time() - cpu0
        if partial:
            self.duration_ns = model.env.now  # collect what happened up to the stop
        result = self._collect(wall)
        result.partial = partial
        return result

    # --- control from outside the model: progress and stop (tdsim.cli_run) ---------------
    def _simulate(self, progress: Callable[[int, int], None] | None,
                  chunk_ns: int | None) -> bool:
        """SimPy until ``sim.duration_us``; with `progress`, in chunks of `chunk_ns` simulated
        ns, calling ``progress(now_ns, end_ns)`` between them.  A chunk boundary is one URGENT
        SimPy event that reorders nothing, so a chunked run equals an unchunked one.  Returns
        True if `request_stop` ended the run early."""
        env, end = self.model.env, self.duration_ns
        step = max(1, chunk_ns) if progress is not None and chunk_ns else end
        t = env.now
        while t < end:
            t = min(t + step, end)
            # SimPy numbers the `until` event and, when it stops the run, reschedules it
            self._control_events += 2
            if env.run(until=t) is _STOPPED:
                return True
            if progress is not None:
                progress(env.now, end)
        self._control_events -= 2  # as counted before chunking existed
        return False

    def request_stop(self) -> None:
        """Stop the run after the event being processed (safe from a signal handler: it only
        schedules a SimPy event at the current instant).  `run` then collects the results
        up to that instant and marks them ``partial``."""
        stop = self.model.env.event()
        stop.callbacks.append(StopSimulation.callback)
        stop.succeed(_STOPPED)
        self._control_events += 2

    # --- collect -----------------------------------------------------------------------
    def _collect(self, wall_s: float) -> Result:
        model = self.model
        end = self.duration_ns
        for cpu in model.cpus:
            curr = cpu.curr
            if curr is None:
                cpu.ns[IDLE] += end - cpu.idle_since
            elif curr.seg_t0 >= 0:
                curr.end_seg(end)
            if sum(cpu.ns) != end:
                raise AssertionError(f"tdsim bug: cpu{cpu.index} time parts sum to "
                                     f"{sum(cpu.ns)} ns, not {end}")
        model.irq.check_end(model.vcpus)
        sept.check_end(model.findings, model.env.now, model.zappers)
        warm = self._warm
        if warm is not None:
            for cpu, ns in zip(model.cpus, warm["cpu"], strict=True):
                cpu.ns = [a - b for a, b in zip(cpu.ns, ns, strict=True)]
            for vcpu, stat in zip(model.vcpus, warm["vcpu"], strict=True):
                for key, value in stat.items():
                    vcpu.stat[key] -= value
            for key, value in warm["host"].items():
                model.host_stat[key] -= value
        metrics: dict[str, int | float] = {}

        def add(key: str, value: int | float) -> None:
            metrics[key] = metrics.get(key, 0) + value

        for vcpu in model.vcpus:
            prefix = vcpu.scope.metric_prefix
            for key, value in with_sums(vcpu.stat).items():
                if value:
                    metrics[prefix + key] = value
                    add(key, value)
        for key, value in with_sums(model.host_stat).items():
            if value:
                add(key, value)
        for key in [k for k in metrics if k.startswith("wrmsr.msr.")]:
            add("wrmsr.total", metrics[key])
        metrics.setdefault("wrmsr.total", 0)
        for base in ("exits", "host_state_reload", "vcpu_load", "vcpu_put", "userspace_exits",
                     "migrations", "late_abort"):
            metrics.setdefault(base, 0)
        metrics["wrmsr.ns"] = metrics["wrmsr.total"] * self.config.costs.wrmsr_ns
        if "regs.copies" in metrics:  # GPR moves are 8 bytes each
            metrics["regs.bytes"] = 8 * metrics["regs.copies"]
        for cpu in model.cpus:
            for cat, name in enumerate(CATEGORY_NAMES):
                metrics[f"cpu.{cpu.index}.ns.{name}"] = cpu.ns[cat]
        model.irq.collect(metrics)
        for name, count in model.findings.counts.items():
            metrics[f"violations.{name}"] = count
        metrics["sim.duration_ns"] = end
        metrics["sim.measured_ns"] = end - (self.warmup_ns if warm is not None else 0)
        bad = undeclared(list(metrics))
        if bad:
            raise AssertionError(f"tdsim bug: metrics not declared in tdsim.metrics: "
                                 f"{', '.join(bad[:5])}")
        exits = metrics["exits"]
        # Events scheduled: SimPy numbers every scheduled event from one counter (a private
        # attribute, read once here; nothing is patched).
        sim_events = next(model.env._eid) - self._control_events
        perf = {
            "wall_s": round(wall_s, 6),
            "cpu_s": round(self._cpu_s, 6),
            "sim_events": sim_events,
            "td_exits": exits,
            "events_per_td_exit": round(sim_events / exits, 4) if exits else None,
            "td_exits_per_s": round(exits / wall_s, 1) if wall_s > 0 else None,
            "compiled": _compiled.ACTIVE,  # the compiled build ran it (same results, faster)
        }
        # per-call records of scripted guests and what the VMM saw
        details: dict[str, Any] = {}
        calls = {v.name: v.guest.calls for v in model.vcpus
                 if isinstance(v.guest, ScriptedGuest)}
        if calls:
            details["calls"] = calls
        vmm = model.vmm.report()
        if vmm:
            details["vmm"] = vmm
        return Result(self.scenario, self.seed, dict(sorted(metrics.items())),
                      list(model.findings.records), perf, details)


@dataclass
class Result:
    """What a run produced.  `to_dict()` is the JSON result document."""

    scenario: Scenario
    seed: int
    metrics: dict[str, int | float]
    violations: list[dict[str, Any]]
    perf: dict[str, Any] = field(default_factory=dict)
    # optional top-level keys, present only when non-empty: "calls" (scripted guests'
    # per-call records, by vCPU) and "vmm" (device reads/writes, system events)
    details: dict[str, Any] = field(default_factory=dict)
    # stopped early (`Simulation.request_stop`, Ctrl-C in the CLI): metrics cover only the
    # simulated time up to the stop, ``metrics["sim.duration_ns"]``
    partial: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The JSON result document; ``"partial": true`` only for a run stopped early."""
        return {
            **({"partial": True} if self.partial else {}),
            **self.details,
            "tdsim_version": __version__,
            "scenario": self.scenario.data,
            "seed": self.seed,
            "metrics": self.metrics,
            "violations": self.violations,
            "perf": self.perf,
        }


def run(scenario: Scenario, tracer: Tracer | None = None,
        variants: list[str] | tuple[str, ...] = ()) -> Result:
    """Run one scenario (deterministic in its data, seed included).  `variants`: names of
    deliberately wrong kernel variants to install (`tdsim.variants`; tests only)."""
    return Simulation(scenario, tracer, variants).run()
