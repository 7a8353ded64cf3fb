"""Invariants of the modelled system, checked during every run.

A broken invariant of the *modelled* system (host state leaking into user code, a KVM cache
that disagrees with the hardware) is a finding, not a crash: it is recorded with the time,
CPU, vCPU and a one-line explanation, counted as ``violations.<invariant>``, and the run goes
on.  (Bugs in tdsim itself -- time going backwards, CPU time that does not add up -- raise.)

Invariants:

* ``host_state_leak`` -- host user code runs (a task returns to user mode, or a context switch
  saves a task's GS base) while a user-return MSR or KERNEL_GS_BASE holds a non-host value.
* ``uret_cache_mismatch`` -- when no TD guest state is loaded on a CPU (after vcpu_put and at
  user return), KVM's user-return ``curr`` differs from the hardware MSR.  While a TD vCPU is
  loaded the v6.16 design lets them differ on purpose, so they are not compared then.
* ``kernel_gs_base_not_restored`` -- after vcpu_put the CPU's KERNEL_GS_BASE is not the
  vCPU thread's own GS base.
* ``cpu_runs_one_thing`` / ``vcpu_on_one_cpu`` -- the scheduler put two threads on one CPU, or
  one thread on two CPUs.

The oracles that watch late entry aborts and exit-status handling (``guest_msr_corruption``,
``error_status_dispatched``, ``spurious_nmi``, ``spurious_external_interrupt``,
``tdvmcall_completion``, ``entry_on_associated_vcpu``) are listed in `tdsim.oracles` and
recorded through `Invariants.record` like these.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from . import arch

if TYPE_CHECKING:
    from .host import HostCpu, Thread
    from .sim import Simulation

INVARIANTS = ("host_state_leak", "uret_cache_mismatch", "kernel_gs_base_not_restored",
              "cpu_runs_one_thing", "vcpu_on_one_cpu",
              # issue 4, checked by tdsim.interrupts and tdsim.sept (see their docstrings)
              "lost_interrupt", "stuck_halt", "nmi_accounting", "td_entry_during_zap",
              "zap_stuck")


class Invariants:
    """Records violations (all counted; the first `max_records` per invariant kept)."""

    def __init__(self, sim: "Simulation", max_records: int = 50) -> None:
        self.sim = sim
        self.max_records = max_records
        self.counts: Counter[str] = Counter()
        self.records: list[dict] = []

    def record(self, invariant: str, cpu: int, vcpu: str | None, detail: str) -> None:
        self.counts[invariant] += 1
        t = self.sim.env.now
        if self.counts[invariant] <= self.max_records:
            self.records.append({"invariant": invariant, "t_ns": t, "cpu": cpu,
                                 "vcpu": vcpu, "detail": detail})
        tracer = self.sim.tracer
        if tracer is not None:
            tracer.emit(t, "violation", cpu, vcpu, invariant=invariant, detail=detail)

    def _check_uret_cache(self, cpu: "HostCpu", who: str | None, where: str) -> None:
        uret = cpu.uret
        hw = cpu.msr
        for slot, believed in uret.curr.items():
            if hw[slot] != believed:
                self.record("uret_cache_mismatch", cpu.index, who,
                            f"{where}: KVM believes {arch.MSR_NAMES[slot]}={believed:#x} "
                            f"but the CPU holds {hw[slot]:#x}")

    def check_user_mode(self, cpu: "HostCpu", task: "Thread") -> None:
        """`task` is about to run user code on `cpu` (after the user-return notifier)."""
        hw = cpu.msr
        for slot, host in cpu.uret.host.items():
            if hw[slot] != host:
                self.record("host_state_leak", cpu.index, task.name,
                            f"{task.name} returns to user mode with {arch.MSR_NAMES[slot]}="
                            f"{hw[slot]:#x} (host value {host:#x})")
        kgs = hw[arch.MSR_KERNEL_GS_BASE]
        if kgs != task.gsbase:
            self.record("host_state_leak", cpu.index, task.name,
                        f"{task.name} returns to user mode with KERNEL_GS_BASE={kgs:#x} "
                        f"(its GS base is {task.gsbase:#x})")
        if cpu.loaded_vcpu is None:
            self._check_uret_cache(cpu, task.name, "user return")

    def check_after_put(self, cpu: "HostCpu", vcpu) -> None:
        """After vcpu_put: no guest state is loaded on `cpu` any more."""
        kgs = cpu.msr[arch.MSR_KERNEL_GS_BASE]
        if kgs != vcpu.gsbase:
            self.record("kernel_gs_base_not_restored", cpu.index, vcpu.name,
                        f"after vcpu_put KERNEL_GS_BASE={kgs:#x}, host value "
                        f"{vcpu.gsbase:#x}")
        self._check_uret_cache(cpu, vcpu.name, "after vcpu_put")
