"""Build a simulation from a resolved scenario, run it, collect the result.

Lifecycle (named phases, as in desmod): build (host CPUs, KVM, the TDX module, VMs, vCPU
threads, host tasks, timers) -> simulate (SimPy until ``sim.duration_us``) -> collect (flush
the segments in progress, aggregate counters into flat dotted metrics, check that each CPU's
time adds up).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import simpy
from simpy.core import StopSimulation

from . import arch, sept
from ._version import __version__
from .faults import Faults
from .guest import GuestVcpu
from .guest_irq import irq_guest
from .host import CATEGORY_NAMES, IDLE, HostCpu, HostTask, Scheduler, new_stat
from .interrupts import IrqStats
from .invariants import Invariants
from .kvm_tdx import VcpuTdx
from .kvm_vmx import VcpuVmx
from .kvm_x86 import KvmX86
from .program import ScriptedGuest, compile_program  # issue 5
from .rng import stream
from .scenario import Scenario
from .strategies import HostStateStrategy, load_strategy
from .tdx_module import TdxModule
from .trace import Tracer
from .vmm import Vmm  # issue 5


_STOPPED = object()  # the value of the event `Simulation.request_stop` schedules


def us_to_ns(us: float) -> int:
    return int(round(us * 1000))


class Vm:
    """struct kvm (+ struct kvm_tdx) of one guest."""

    def __init__(self, index: int, name: str, flavor: str) -> None:
        self.index = index
        self.name = name
        self.flavor = flavor
        self.vcpus: list[VcpuTdx] = []
        # issue 4: interrupt sources and SEPT zaps ([vm.interrupts], [vm.sept]);
        # kvm_tdx->wait_for_sept_zap; TDH.MEM.TRACK holding the TD epoch lock; the window in
        # which no vCPU may enter the TD (tdsim.sept oracle)
        self.interrupts: dict = {}
        self.sept: dict = {}
        self.ipi_rng = None
        self.fault_rng = None  # issue 4: TDH.MEM.PAGE.AUG outcomes of the fault path
        self.wait_for_sept_zap = False
        self.epoch_lock_t0 = self.epoch_lock_t1 = -1
        self.zap_excl_t0 = self.zap_excl_t1 = -1
        self.bugged = False  # issue 3: kvm->vm_bugged (KVM_BUG_ON)


class Simulation:
    """One run of one scenario."""

    def __init__(self, scenario: Scenario, tracer: Tracer | None = None) -> None:
        self.scenario = scenario
        d = scenario.data
        self.seed = d["sim"]["seed"]
        self.duration_ns = us_to_ns(d["sim"]["duration_us"])
        self.warmup_ns = us_to_ns(d["sim"]["warmup_us"])
        self._warm: dict | None = None
        self.tracer = tracer
        self.env = simpy.Environment()
        self._control_events = 0  # chunk boundaries and stops: not the model's events
        # costs: c_<name> for every costs.<name>_ns
        for key, value in d["costs"].items():
            setattr(self, "c_" + key[:-3], int(value))
        self.host_stat = new_stat()
        self.halt_poll_ns = int(d["kvm"]["halt_poll_ns"])  # issue 4
        self.lapic_timer_advance_ns = int(d["kvm"]["lapic_timer_advance_ns"])
        self.invariants = Invariants(self)
        self.violations = self.invariants
        host = d["host"]
        self.cpus = [HostCpu(self, i) for i in range(host["cpus"])]
        self.sched = Scheduler(self, us_to_ns(host["timeslice_us"]), host["wakeup_preempt"])
        self.strategy = load_strategy(d["kvm"]["host_state"])
        # The per-exit hook is skipped outright for strategies that keep the base no-op.
        self.strategy_enter_exit = (
            self.strategy.vcpu_enter_exit
            if type(self.strategy).vcpu_enter_exit is not HostStateStrategy.vcpu_enter_exit
            else None)
        self.kvm = KvmX86(self, self.strategy)
        self.module = TdxModule(self)
        # issue 3: exit-status handling variant and fault injection
        self.exit_reason_raw = d["kvm"]["exit_reason"] == "raw"
        self.faults = Faults(self, d["faults"])
        self.vmm_service_ns = {
            arch.KVM_EXIT_IO: self.c_vmm_io,
            arch.KVM_EXIT_MMIO: self.c_vmm_mmio,
            arch.KVM_EXIT_HYPERCALL: self.c_vmm_mapgpa,
        }
        self.vmm = Vmm(self, d["vmm"])  # issue 5: the userspace VMM's answers
        self.userspace_exit_keys = {
            code: f"userspace_exits.reason.{name}" for code, name in arch.KVM_EXIT_NAMES.items()
        }
        self.userspace_exit_keys[0] = "userspace_exits.reason.KVM_EXIT_UNKNOWN"
        self.vms: list[Vm] = []
        self.vcpus: list[VcpuTdx] = []
        self.timers: list[tuple[VcpuTdx, int]] = []
        self.irq = IrqStats(self)  # issue 4: interrupt sources, latencies, oracles
        self.zappers: list = []    # issue 4: SEPT zap processes (tdsim.sept)
        self._build_vms(d["vm"])
        self.tasks: list[HostTask] = []
        for i in range(host["tasks"]):
            task = HostTask(self, i, stream(self.seed, f"host.task{i}"),
                            us_to_ns(host["task_run_us"]), us_to_ns(host["task_sleep_us"]),
                            host["task_dist"] == "exp")
            self.tasks.append(task)
        self.tick_ns = int(1e9 / host["tick_hz"]) if host["tick_hz"] > 0 else 0

    def _build_vms(self, vms: list[dict]) -> None:
        for vi, vmd in enumerate(vms):
            vm = Vm(vi, vmd["name"], vmd["flavor"])
            wl = vmd["workload"]
            pins = vmd["pin"]
            vm.interrupts = vmd["interrupts"]
            vm.sept = vmd["sept"]
            vm.ipi_rng = stream(self.seed, f"vm.{vm.name}.ipi.dest")
            vm.fault_rng = stream(self.seed, f"vm.{vm.name}.private_fault")
            for i in range(vmd["vcpus"]):
                scope = f"vm.{vm.name}.vcpu{i}"
                oneshot = wl["timer_mode"] == "oneshot" and wl["timer_hz"] > 0
                if wl["program"]:  # issue 5: a scripted guest
                    guest = ScriptedGuest(compile_program(wl["program"], vcpu=i),
                                          self.c_guest_tdvmcall, wl["record_calls"])
                else:
                    guest = irq_guest(self, scope, vmd)  # issue 4: IPIs, re-arms, faults
                if guest is None:
                    guest = GuestVcpu(stream(self.seed, scope + ".workload"),
                                      us_to_ns(wl["compute_us"]), wl["compute_dist"] == "exp",
                                      wl["mix"], self.c_guest_tdvmcall)
                if vm.flavor == "vmx":  # issue 3: VMX co-tenants
                    vcpu = VcpuVmx(self, vm, i, pins[i] if pins else None, guest,
                                   wl["tsc_aux_read_hz"])
                else:
                    vcpu = VcpuTdx(self, vm, i, pins[i] if pins else None, guest)
                if isinstance(guest, ScriptedGuest):
                    guest.bind(vcpu)
                vcpu.cpu = self.cpus[pins[i] if pins else (len(self.vcpus) % len(self.cpus))]
                vm.vcpus.append(vcpu)
                self.vcpus.append(vcpu)
                if wl["timer_hz"] > 0:
                    period = int(1e9 / wl["timer_hz"])
                    phase = stream(self.seed, scope + ".timer").randrange(period)
                    if oneshot:  # issue 4: armed once; the guest re-arms it
                        self.irq.arm_oneshot(vcpu, period, phase)
                    else:
                        self.timers.append((vcpu, period, phase))
            self.vms.append(vm)

    # --- processes ---------------------------------------------------------------------
    def _tick(self):
        """The host timer tick: a host interrupt on every CPU (a TD exit where a TD runs)."""
        env = self.env
        cpus = self.cpus
        period = self.tick_ns
        while True:
            yield env.timeout(period)
            for cpu in cpus:
                cpu.host_irq("tick")

    def _guest_timer(self, vcpu: VcpuTdx, period: int, phase: int):
        """The guest's periodic LAPIC timer, a host hrtimer on the vCPU's CPU: the hrtimer
        interrupt hits that CPU, then the timer vector is posted to the vCPU's PIR."""
        env = self.env
        adv = self.lapic_timer_advance_ns  # issue 4: fire early, KVM waits at entry
        first = phase if phase >= adv else phase + period
        yield env.timeout(first - adv)
        while True:
            vcpu.timer_deadline = env.now + adv
            vcpu.stat["timer_fired"] += 1
            if vcpu.cpu is not None:
                vcpu.cpu.host_irq("timer")
            self.irq.post(vcpu, arch.LOCAL_TIMER_VECTOR, "timer")  # issue 4: via the oracle
            yield env.timeout(period)

    def _warmup(self):
        """At the end of the warm-up, snapshot every counter and CPU time; `_collect`
        subtracts the snapshot."""
        env = self.env
        yield env.timeout(self.warmup_ns)
        now = env.now
        for cpu in self.cpus:
            curr = cpu.curr
            if curr is None:
                cpu.ns[IDLE] += now - cpu.idle_since
                cpu.idle_since = now
            elif curr.seg_t0 >= 0:
                curr.split_seg(now)
        self._warm = {
            "host": dict(self.host_stat),
            "vcpu": [dict(v.stat) for v in self.vcpus],
            "cpu": [list(c.ns) for c in self.cpus],
        }

    def run(self, progress: Callable[[int, int], None] | None = None,
            chunk_ns: int | None = None) -> "Result":
        """Simulate, then collect.  `progress`/`chunk_ns`: see `_simulate`."""
        env = self.env
        for vcpu in self.vcpus:
            vcpu.proc = env.process(vcpu.main())
        for task in self.tasks:
            task.proc = env.process(task.main())
        if self.tick_ns:
            env.process(self._tick())
        if 0 < self.warmup_ns < self.duration_ns:
            env.process(self._warmup())
        for vcpu, period, phase in self.timers:
            env.process(self._guest_timer(vcpu, period, phase))
        self.irq.start()  # issue 4: IPI/device/NMI sources
        self.zappers = sept.start(self)
        self.faults.start()
        wall0 = time.perf_counter()
        partial = self._simulate(progress, chunk_ns)
        wall = time.perf_counter() - wall0
        if partial:
            self.duration_ns = env.now  # collect what happened up to the stop
        result = self._collect(wall)
        result.partial = partial
        return result

    # --- control from outside the model: progress and stop (tdsim.cli_run) ---------------
    def _simulate(self, progress: Callable[[int, int], None] | None, chunk_ns: int | None
                  ) -> bool:
        """SimPy until ``sim.duration_us``; with `progress`, in chunks of `chunk_ns` simulated
        ns, calling ``progress(now_ns, end_ns)`` between them.  A chunk boundary is one URGENT
        SimPy event that reorders nothing, so a chunked run equals an unchunked one.  Returns
        True if `request_stop` ended the run early."""
        env, end = self.env, self.duration_ns
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
        stop = self.env.event()
        stop.callbacks.append(StopSimulation.callback)
        stop.succeed(_STOPPED)
        self._control_events += 2

    # --- collect -----------------------------------------------------------------------
    def _collect(self, wall_s: float) -> "Result":
        end = self.duration_ns
        for cpu in self.cpus:
            curr = cpu.curr
            if curr is None:
                cpu.ns[IDLE] += end - cpu.idle_since
            elif curr.seg_t0 >= 0:
                curr.end_seg(end)
            if sum(cpu.ns) != end:
                raise AssertionError(f"tdsim bug: cpu{cpu.index} time parts sum to "
                                     f"{sum(cpu.ns)} ns, not {end}")
        self.irq.check_end()  # issue 4: end-of-run interrupt and zap oracles
        sept.check_end(self, self.zappers)
        warm = self._warm
        if warm is not None:
            for cpu, ns in zip(self.cpus, warm["cpu"]):
                cpu.ns = [a - b for a, b in zip(cpu.ns, ns)]
            for vcpu, stat in zip(self.vcpus, warm["vcpu"]):
                for key, value in stat.items():
                    vcpu.stat[key] -= value
            for key, value in warm["host"].items():
                self.host_stat[key] -= value
        metrics: dict[str, int | float] = {}

        def add(key: str, value: int | float) -> None:
            metrics[key] = metrics.get(key, 0) + value

        for vm in self.vms:
            for vcpu in vm.vcpus:
                prefix = f"vm.{vm.name}.vcpu.{vcpu.vcpu_id}."
                for key, value in vcpu.stat.items():
                    if value:
                        metrics[prefix + key] = value
                        add(key, value)
        for key, value in self.host_stat.items():
            if value:
                add(key, value)
        for key in [k for k in metrics if k.startswith("wrmsr.msr.")]:
            add("wrmsr.total", metrics[key])
        metrics.setdefault("wrmsr.total", 0)
        for base in ("exits", "host_state_reload", "vcpu_load", "vcpu_put", "userspace_exits",
                     "migrations", "late_abort"):
            metrics.setdefault(base, 0)
        metrics["wrmsr.ns"] = metrics["wrmsr.total"] * self.c_wrmsr
        if "regs.copies" in metrics:  # issue 5: GPR moves are 8 bytes each
            metrics["regs.bytes"] = 8 * metrics["regs.copies"]
        for cpu in self.cpus:
            for cat, name in enumerate(CATEGORY_NAMES):
                metrics[f"cpu.{cpu.index}.ns.{name}"] = cpu.ns[cat]
        self.irq.collect(metrics)  # issue 4: latency percentiles
        for name, count in self.invariants.counts.items():
            metrics[f"violations.{name}"] = count
        metrics["sim.duration_ns"] = end
        metrics["sim.measured_ns"] = end - (self.warmup_ns if warm is not None else 0)
        exits = metrics["exits"]
        # Events scheduled: SimPy numbers every scheduled event from one counter (a private
        # attribute, read once here; nothing is patched).
        sim_events = next(self.env._eid) - self._control_events
        perf = {
            "wall_s": round(wall_s, 6),
            "sim_events": sim_events,
            "td_exits": exits,
            "events_per_td_exit": round(sim_events / exits, 4) if exits else None,
            "td_exits_per_s": round(exits / wall_s, 1) if wall_s > 0 else None,
        }
        # issue 5: per-call records of scripted guests and what the VMM saw
        details: dict[str, Any] = {}
        calls = {v.name: v.guest.calls for v in self.vcpus if isinstance(v.guest, ScriptedGuest)}
        if calls:
            details["calls"] = calls
        vmm = self.vmm.report()
        if vmm:
            details["vmm"] = vmm
        return Result(self.scenario, self.seed, dict(sorted(metrics.items())),
                      list(self.invariants.records), perf, details)


@dataclass
class Result:
    """What a run produced.  `to_dict()` is the JSON result document."""

    scenario: Scenario
    seed: int
    metrics: dict[str, int | float]
    violations: list[dict[str, Any]]
    perf: dict[str, Any] = field(default_factory=dict)
    # issue 5: optional top-level keys, present only when non-empty: "calls" (scripted
    # guests' per-call records, by vCPU) and "vmm" (device reads/writes, system events)
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


def run(scenario: Scenario, tracer: Tracer | None = None) -> Result:
    """Run one scenario (deterministic in its data, seed included)."""
    return Simulation(scenario, tracer).run()
