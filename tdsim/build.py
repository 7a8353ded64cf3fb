"""The build step: construct the model's components from a scenario's configuration views and
hand each what it needs (the environment, its view of the configuration and costs, the
tracer, the findings recorder, the components it talks to), then start its processes.

Phases, as in desmod: `build` (host CPUs, the scheduler, KVM, the TDX module, the VMM, VMs and
their vCPU threads with their guests, host tasks), `Model.start` (the SimPy processes, in a
fixed order: the order in which events are first scheduled decides ties at equal times, so it
is part of the results).  The runner (`tdsim.sim`) simulates and collects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from . import interrupts, sept, tdvmcall
from .choices import Runtime
from .clock import Environment
from .config import hz_to_period_ns
from .faults import Faults
from .findings import Findings
from .guest import GuestVcpu
from .guest_irq import irq_guest
from .host import (
    HostCpu,
    HostTask,
    HostXstate,
    Scheduler,
    UserGsBaseChanges,
    cpu_hotplug,
    new_stat,
)
from .irqstats import IrqStats
from .kvm_tdx import KvmTdx, TdxPerCpu, VcpuTdx
from .kvm_vmx import VcpuVmx
from .kvm_x86 import Kvm, KvmVcpu, KvmX86
from .lapic import LapicTimer
from .program import (
    ScriptedGuest,
    compile_program,
    scripted_vp_enter_outcome,
    scripted_vp_enter_regs,
)
from .rng import stream
from .schedule import from_data as schedule_from_data
from .scope import VcpuScope, vm_stream
from .strategies import HostStateStrategy
from .tdx_module import TdxModule
from .vmm import Vmm
from .vt import SCRIPTED_TDX_X86_OPS, TDX_X86_OPS, vt_disable_virtualization_cpu

if TYPE_CHECKING:
    from .config import ModelConfig
    from .host import Stat
    from .trace import Tracer


@dataclass
class Model:
    """The built model of one run."""

    config: ModelConfig
    env: Environment
    tracer: Tracer | None
    findings: Findings
    host_stat: Stat
    cpus: list[HostCpu]
    sched: Scheduler
    strategy: HostStateStrategy
    kvm: KvmX86
    module: TdxModule
    faults: Faults
    vmm: Vmm
    irq: IrqStats
    vms: list[Kvm] = field(default_factory=list)
    vcpus: list[KvmVcpu] = field(default_factory=list)
    timers: list[tuple[LapicTimer, int]] = field(default_factory=list)  # periodic, phase
    tasks: list[HostTask] = field(default_factory=list)
    zappers: list[sept.SeptZapper] = field(default_factory=list)
    choices: Runtime | None = None  # a schedule's, a recording's or a search's (tdsim.choices)

    def start(self) -> None:
        """Start every process, in the model's fixed order."""
        env = self.env
        cfg = self.config
        for vcpu in self.vcpus:
            vcpu.proc = env.process(vcpu.vcpu_thread())
        for task in self.tasks:
            task.proc = env.process(task.main())
        tick_ns = hz_to_period_ns(cfg.host.tick_hz)
        if tick_ns:
            env.process(interrupts.host_tick(env, self.cpus, tick_ns))
        for cpu, offline_ns, online_ns in cfg.host.hotplug:
            env.process(cpu_hotplug(env, self.sched, self.cpus[cpu], offline_ns, online_ns,
                                    self.host_stat, self.tracer))

    def start_sources(self) -> None:
        """Start the guest timers and the interrupt, SEPT-zap and fault sources (after the
        runner's own processes)."""
        env = self.env
        cfg = self.config
        choices = self.choices
        tap = choices.tap if choices is not None else None
        random_sources = choices is None or choices.random_sources
        for timer, phase in self.timers:
            env.process(timer.periodic(phase))
        if random_sources:
            interrupts.start(env, cfg.sim.seed, self.vms, self.cpus, cfg.host.nmi_hz,
                             self.irq, self.host_stat, tap)
        for zapper in self.zappers:
            env.process(zapper.run())
        if random_sources:
            self.faults.start(self.vcpus, self.vms, tap)


def build(config: ModelConfig, strategy: HostStateStrategy, tracer: Tracer | None,
          choices: Runtime | None = None) -> Model:
    """Construct the model of `config` (no process is started yet).  `choices`: the run's
    choice points (`tdsim.choices`; made here when the scenario has a schedule)."""
    schedule = schedule_from_data(config.schedule)
    if choices is None and schedule:
        choices = Runtime()
    if choices is not None:
        choices.prepare(schedule)
    env = Environment()
    seed = config.sim.seed
    costs = config.costs
    host_stat = new_stat()
    findings = Findings(env, tracer)
    host = config.host
    xstate = HostXstate(host.debugctl, host.xcr0, host.xss, host.pkru)
    cpus = [HostCpu(env, i, costs.wrmsr_ns, costs.rdmsr_ns, tracer, host_stat, xstate,
                    costs.xsetbv_ns, costs.wrpkru_ns)
            for i in range(config.host.cpus)]
    sched = Scheduler(env, cpus, config.host.timeslice_ns, config.host.wakeup_preempt,
                      costs.context_switch_ns, findings, tracer)
    kvm = KvmX86(cpus, strategy, config.kvm, findings)
    module = TdxModule(env, len(cpus), costs, findings, tracer)
    faults = Faults(env, seed, config.faults, sched, host_stat)
    if faults.module:
        module.vp_enter_outcome = faults.vp_enter_outcome
    if any(vmc.workload.program for vmc in config.vms):
        # scripted guests may force TDH.VP.ENTER outcomes (vp_enter steps)
        module.vp_enter_outcome = scripted_vp_enter_outcome(module.vp_enter_outcome)
        module.vp_enter_regs = scripted_vp_enter_regs
    vmm = Vmm(env, config.vmm, costs)
    sim = config.sim
    t_measure = sim.warmup_ns if 0 < sim.warmup_ns < sim.duration_ns else 0
    irq = IrqStats(env, findings, t_measure)
    model = Model(config, env, tracer, findings, host_stat, cpus, sched, strategy, kvm,
                  module, faults, vmm, irq)
    percpu = TdxPerCpu(cpus)
    for vmc in config.vms:
        vm: Kvm
        if vmc.flavor == "vmx":
            vm = Kvm(vmc.index, vmc.name, "vmx", vmc.interrupts)
        else:
            vm = KvmTdx(vmc.index, vmc.name, vmc.interrupts, vmc.sept,
                        vm_stream(seed, vmc.name, "ipi.dest"),
                        vm_stream(seed, vmc.name, "private_fault"), vmc.xfam,
                        config.host.debugctl)
        vm.stat = host_stat
        vmm.set_up_vm(vm)
        wl = vmc.workload
        for i in range(vmc.vcpus):
            scope = VcpuScope(vmc.name, i)
            guest: Any
            periods = choices.periods_for(scope.name) if choices is not None else None
            if wl.program:
                guest = ScriptedGuest(compile_program(list(wl.program), vcpu=i),
                                      costs.guest_tdvmcall_ns, wl.record_calls)
            else:
                guest = irq_guest(scope, seed, vmc, costs.guest_tdvmcall_ns, periods)
            if guest is None:
                guest = GuestVcpu(scope.stream(seed, "workload"), wl.compute_ns,
                                  wl.compute_exp, wl.mix, costs.guest_tdvmcall_ns, periods)
            pin = vmc.pin[i] if vmc.pin else None
            first_cpu = cpus[pin if pin is not None else (len(model.vcpus) % len(cpus))]
            vcpu: KvmVcpu
            if isinstance(vm, KvmTdx):
                ops = SCRIPTED_TDX_X86_OPS if isinstance(guest, ScriptedGuest) else TDX_X86_OPS
                tdx = VcpuTdx(env, scope, vm, pin, guest, costs, config.kvm, kvm, module,
                              percpu, sched, irq, new_stat(), findings, tracer, ops,
                              first_cpu)
                tdvmcall.init_vcpu(tdx)
                vmm.set_up_vcpu(tdx)
                tdx.vmm_service = vmm.handle_exit
                vcpu = tdx
            else:
                vcpu = VcpuVmx(env, scope, vm, pin, guest, wl.tsc_aux_read_hz, costs, kvm,
                               sched, irq, new_stat(), findings, tracer, first_cpu)
            if faults.mmu_rng is not None:
                vcpu.mmu_reload_fails = faults.mmu_reload_fails
            if config.host.gs_base_change_hz > 0:
                vcpu.gs_base_changes = UserGsBaseChanges(
                    scope.stream(seed, "gs_base"), config.host.gs_base_change_hz,
                    config.host.gs_base_change, vcpu.stat, tracer)
            if isinstance(guest, ScriptedGuest):
                guest.bind(vcpu)
            vm.vcpus.append(vcpu)
            model.vcpus.append(vcpu)
            if wl.timer_hz > 0:
                period = int(1e9 / wl.timer_hz)
                phase = scope.stream(seed, "timer").randrange(period)
                timer = LapicTimer(env, vcpu, irq, config.kvm.lapic_timer_advance_ns, period)
                vcpu.lapic_timer = timer
                if wl.timer_oneshot:
                    # armed once now; the guest re-arms it
                    vcpu.oneshot_period = period
                    timer.hrtimer_start(phase)
                else:
                    model.timers.append((timer, phase))
        model.vms.append(vm)
        if isinstance(vm, KvmTdx) and vm.sept.zap_hz > 0:
            model.zappers.append(sept.new_zapper(env, vm, costs, seed, host_stat, tracer))
    # CPU hotplug: the scheduler's teardown and startup callbacks are KVM's
    kvm.disable_virtualization_cpu = partial(
        vt_disable_virtualization_cpu, percpu,
        [v for v in model.vcpus if isinstance(v, VcpuVmx)])
    kvm.associated_with = percpu.associated_with
    sched.cpuhp_teardown = kvm.kvm_offline_cpu
    sched.cpuhp_startup = kvm.kvm_online_cpu
    host = config.host
    for i in range(host.tasks):
        task = HostTask(env, i, stream(seed, f"host.task{i}"), host.task_run_ns,
                        host.task_sleep_ns, host.task_dist_exp, cpus[i % len(cpus)], sched,
                        host_stat, tracer)
        if host.gs_base_change_hz > 0:
            task.gs_base_changes = UserGsBaseChanges(
                stream(seed, f"host.task{i}.gs_base"), host.gs_base_change_hz,
                host.gs_base_change, host_stat, tracer)
        model.tasks.append(task)
    if choices is not None:
        choices.attach(model)
    return model
