"""Generic x86 KVM: the user-return MSR machinery and the per-vCPU run loop (arch/x86/kvm/x86.c,
with kvm_vcpu_kick and friends from virt/kvm/kvm_main.c).

The run loop reads as the kernel's: ``kvm_arch_vcpu_ioctl_run -> vcpu_run -> vcpu_enter_guest
-> kvm_x86_ops.vcpu_run`` (``tdx_vcpu_run`` for a TD), then ``handle_exit_irqoff`` and
``handle_exit``; the preempt notifiers (``kvm_sched_out`` / ``kvm_sched_in``) call vcpu_put /
vcpu_load.  Vendor code (`tdsim.kvm_tdx`, `tdsim.kvm_vmx`) plugs in through a `KvmX86Ops`
table, as ``vt_x86_ops`` in vmx/main.c does.  Functions that may let simulated time pass are
generators (called with ``yield from``); everything else is a plain call that charges its cost
to the CPU's accumulator.  Where time passes and what can cut it short is `tdsim.segment`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from mypy_extensions import mypyc_attr

from . import arch, invariants
from .arch import (
    EXITING_GUEST_MODE,
    IN_GUEST_MODE,
    KVM_REQ_DIRTY_RING_SOFT_FULL,
    KVM_REQ_EVENT,
    KVM_REQ_NAMES,
    KVM_REQ_NMI,
    KVM_REQ_VM_DEAD,
    OUTSIDE_GUEST_MODE,
)
from .host import HOST_IRQ, SLEEPING, VMM, ProcessGenerator
from .oracles import KICK, NOTIFY_RESUME, REQUEST, SIGNAL
from .segment import (
    EXIT_REQUEST,
    PH_BLOCKED,
    PH_POLL,
    PH_SEG,
    PH_STOPPED,
    PH_WAIT,
    WAKE,
    LateCheckFired,
    VcpuSegment,
)
from .tdx_module import TdxModuleArgs

if TYPE_CHECKING:
    from .clock import Environment
    from .config import Costs, InterruptConfig, KvmConfig
    from .findings import Findings
    from .host import HostCpu, Scheduler, Stat, Thread, UserGsBaseChanges
    from .irqstats import IrqStats
    from .scope import VcpuScope
    from .strategies import HostStateStrategy
    from .trace import Tracer

# vcpu->arch.mp_state (uapi values)
KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_HALTED = 0, 3

KVM_REQ_ABORT_MASK = KVM_REQ_VM_DEAD | KVM_REQ_DIRTY_RING_SOFT_FULL

# fastpath_t (arch/x86/include/asm/kvm_host.h)
EXIT_FASTPATH_NONE, EXIT_FASTPATH_REENTER_GUEST, EXIT_FASTPATH_EXIT_HANDLED = 0, 1, 2
EXIT_FASTPATH_EXIT_USERSPACE = 3

# Fatal userspace exits: the VMM stops the vCPU (as QEMU does)
_FATAL_RUN_EXITS = frozenset({arch.KVM_EXIT_INTERNAL_ERROR, arch.KVM_EXIT_FAIL_ENTRY,
                              arch.KVM_EXIT_SHUTDOWN, arch.KVM_EXIT_EXCEPTION})

# late_abort.<path> metric keys (docs/late-aborts.md); operand_busy_late counts as
# operand_busy (an OPERAND_BUSY raised after the module associated the vCPU)
ABORT_KEYS = {k: f"late_abort.{k}" for k in (
    "kick", "request", "signal", "notify_resume", "need_resched", "request_exit", "vm_dead",
    "mmu_reload_fail", "wait_for_sept_zap", "operand_busy", "tsc_rollback",
    "inconsistent_msr", "vcpu_associated", "sw_error", "zero_step", "failed_vmentry")}
ABORT_KEYS["operand_busy_late"] = "late_abort.operand_busy"

PUT_PREEMPT = "vcpu_put.cause.preempt"
PUT_KVM_RUN_RETURN = "vcpu_put.cause.kvm_run_return"
PUT_HALT = "vcpu_put.cause.halt"

USER_RETURN_MSRS = (arch.MSR_STAR, arch.MSR_LSTAR, arch.MSR_CSTAR, arch.MSR_SYSCALL_MASK,
                    arch.MSR_TSC_AUX)


GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@mypyc_attr(allow_interpreted_subclasses=True)
class KvmRegs(TdxModuleArgs):
    """vcpu->arch.regs[NR_VCPU_REGS]: the GPR cache, in KVM's order (VCPU_REGS_RAX..R15): the
    13 registers of struct tdx_module_args and RAX, RSP, RBP.

    With ``regs_layout = "in_place"`` it is also a TD vCPU's ``vp_enter_args`` (the TDX
    module reads and writes the 13 registers of struct tdx_module_args by name)."""

    __slots__ = ("rax", "rsp", "rbp")

    def clear(self) -> None:
        self.rax = self.rcx = self.rdx = self.rbx = self.rsp = self.rbp = self.rsi = 0
        self.rdi = self.r8 = self.r9 = self.r10 = self.r11 = self.r12 = self.r13 = 0
        self.r14 = self.r15 = 0


class KvmRun:
    """struct kvm_run as the model uses it: ``exit_reason`` and the union member of the last
    exit to userspace (one reused dict per member)."""

    __slots__ = ("exit_reason", "io", "mmio", "hypercall", "system_event", "tdx", "msr",
                 "internal", "fail_entry", "ex", "memory_fault")

    MEMBER: ClassVar[dict[int, str]] = {
        arch.KVM_EXIT_IO: "io", arch.KVM_EXIT_MMIO: "mmio",
        arch.KVM_EXIT_HYPERCALL: "hypercall", arch.KVM_EXIT_SYSTEM_EVENT: "system_event",
        arch.KVM_EXIT_TDX: "tdx", arch.KVM_EXIT_X86_RDMSR: "msr", arch.KVM_EXIT_X86_WRMSR: "msr",
        arch.KVM_EXIT_INTERNAL_ERROR: "internal", arch.KVM_EXIT_FAIL_ENTRY: "fail_entry",
        arch.KVM_EXIT_EXCEPTION: "ex", arch.KVM_EXIT_MEMORY_FAULT: "memory_fault"}

    def __init__(self) -> None:
        self.exit_reason = 0
        self.io: dict[str, Any] = {}
        self.mmio: dict[str, Any] = {}
        self.hypercall: dict[str, Any] = {}
        self.system_event: dict[str, Any] = {}
        self.tdx: dict[str, Any] = {}
        self.msr: dict[str, Any] = {}
        self.internal: dict[str, Any] = {}
        self.fail_entry: dict[str, Any] = {}
        self.ex: dict[str, Any] = {}
        self.memory_fault: dict[str, Any] = {}

    def snapshot(self) -> dict[str, Any]:
        """The exit as a JSON-able dict: exit_reason name and its member's fields."""
        member = self.MEMBER.get(self.exit_reason)
        out: dict[str, Any] = {
            "exit_reason": arch.KVM_EXIT_NAMES.get(self.exit_reason, str(self.exit_reason))}
        if member is not None:
            fields = getattr(self, member)
            out[member] = {k: (list(v) if isinstance(v, list) else v)
                           for k, v in fields.items()}
        return out


class KvmUserReturnMsrs:
    """struct kvm_user_return_msrs of one CPU: per slot the ``host`` value and ``curr``,
    the value KVM *believes* is in the hardware; plus the notifier registration.

    Slots are keyed by MSR index (the kernel uses small slot numbers)."""

    __slots__ = ("cpu", "host", "curr", "registered")

    def __init__(self, cpu: HostCpu, msrs: tuple[int, ...] = USER_RETURN_MSRS) -> None:
        """kvm_user_return_msr_cpu_online: read the host values from the hardware."""
        self.cpu = cpu
        self.host = {m: cpu.msr[m] for m in msrs}
        self.curr = dict(self.host)
        self.registered = False

    def kvm_set_user_return_msr(self, slot: int, value: int, site: str,
                                mask: int = ~0) -> None:
        """kvm_set_user_return_msr: merge with host bits outside `mask`; WRMSR only if the
        cached value differs; register the notifier."""
        value = (value & mask) | (self.host[slot] & ~mask)
        if value == self.curr[slot]:
            return
        cpu = self.cpu
        cpu.wrmsr(slot, value, site)
        self.curr[slot] = value
        tracer = cpu.tracer
        if tracer is not None:
            self.trace_belief(tracer, slot, value, "set")
        self.registered = True

    def kvm_user_return_msr_update_cache(self, slot: int, value: int) -> None:
        """kvm_user_return_msr_update_cache (v6.16): believe `value` is in the MSR, without
        writing it; register the notifier."""
        self.curr[slot] = value
        tracer = self.cpu.tracer
        if tracer is not None:
            self.trace_belief(tracer, slot, value, "update_cache")
        self.registered = True

    def kvm_on_user_return(self, site: str) -> None:
        """kvm_on_user_return: unregister; write back every host value the cache says is
        not in place."""
        tracer = self.cpu.tracer
        if tracer is not None:
            self.trace_unregister(tracer)
        self.registered = False
        host = self.host
        curr = self.curr
        for slot, value in host.items():
            if curr[slot] != value:
                self.cpu.wrmsr(slot, value, site)
                curr[slot] = value
                if tracer is not None:
                    self.trace_belief(tracer, slot, value, "user_return")

    def trace_unregister(self, tracer: Tracer) -> None:
        """Trace the notifier's unregistration (``uret_notifier``), if it was registered."""
        if self.registered:
            tracer.emit(self.cpu.env.now, "uret_notifier", self.cpu.index, self.who(),
                        registered=False)

    def who(self) -> str | None:
        """The thread running on the CPU (for trace events)."""
        cur = self.cpu.curr
        return cur.name if cur else None

    def trace_belief(self, tracer: Tracer, slot: int, value: int, via: str) -> None:
        """Trace a change of KVM's belief of `slot` (``uret_cache``) and, for a change that
        registers the notifier, the registration (``uret_notifier``)."""
        cpu = self.cpu
        now = cpu.env.now
        who = self.who()
        tracer.emit(now, "uret_cache", cpu.index, who, msr=arch.MSR_NAMES[slot],
                    value=hex(value), via=via)
        if via != "user_return" and not self.registered:
            tracer.emit(now, "uret_notifier", cpu.index, who, registered=True)


# The names of the strategy interface (``cpu.uret.set`` ...), documented in tdsim.strategies,
# for the methods above.  Set after the class body, by name: a class compiled with mypyc
# (make compiled) cannot alias its own methods in its body.
for _alias, _method in (("set", "kvm_set_user_return_msr"),
                        ("update_cache", "kvm_user_return_msr_update_cache"),
                        ("on_user_return", "kvm_on_user_return")):
    setattr(KvmUserReturnMsrs, _alias, getattr(KvmUserReturnMsrs, _method))


class KvmX86:
    """kvm.ko-wide state of one host: the per-CPU user-return MSRs and running vCPU, the
    host-state strategy, and the user-return notifier every host task's return to user
    mode goes through."""

    def __init__(self, cpus: list[HostCpu], strategy: HostStateStrategy, config: KvmConfig,
                 findings: Findings) -> None:
        self.strategy = strategy
        self.config = config
        self.findings = findings
        self.running_vcpu: list[KvmVcpu | None] = [None] * len(cpus)  # kvm_running_vcpu
        # kvm_x86_vendor_init: the host's XCR0 and IA32_XSS as KVM reads them at load
        # (kvm_host.xcr0 / .xss) and what it supports of them (kvm_caps.supported_xcr0 / _xss)
        boot = cpus[0]
        self.host_xcr0 = boot.xcr0
        self.host_xss = boot.msr[arch.MSR_IA32_XSS]
        self.supported_xcr0 = self.host_xcr0 & arch.KVM_SUPPORTED_XCR0
        self.supported_xss = self.host_xss & config.supported_xss
        for cpu in cpus:
            self.kvm_user_return_msr_cpu_online(cpu)
        # the vendor's disable_virtualization_cpu (vt_disable_virtualization_cpu), and the
        # TD vCPUs a CPU still has associated after it (for tdsim's check); set by the build
        self.disable_virtualization_cpu: Callable[[HostCpu], None] = lambda cpu: None
        self.associated_with: Callable[[HostCpu], list[str]] = lambda cpu: []

    # --- CPU hotplug ------------------------------------------------------------------------
    def kvm_offline_cpu(self, cpu: HostCpu) -> None:
        """kvm_offline_cpu (kvm_main.c, the CPU's teardown, on that CPU) ->
        kvm_disable_virtualization_cpu -> kvm_arch_disable_virtualization_cpu (x86.c): the
        vendor's disable_virtualization_cpu, then drop_user_return_notifiers.  Then tdsim
        checks what the CPU is left with.

        Simplified: no kvm_usage_count / virtualization_enabled bookkeeping (TDX keeps
        virtualization enabled while KVM is loaded), no cost (the CPU is going down)."""
        self.disable_virtualization_cpu(cpu)
        self.drop_user_return_notifiers(cpu)
        invariants.check_offline_cpu(self.findings, cpu, self.associated_with(cpu))

    def drop_user_return_notifiers(self, cpu: HostCpu) -> None:
        """drop_user_return_notifiers (x86.c): if KVM's notifier is registered on this CPU,
        run it now (kvm_on_user_return: unregister, restore the host values).  The strategy
        owns the notifier's body, as for a return to user mode (WRMSR site ``user_return``)."""
        if cpu.uret.registered:
            self.strategy.user_return(cpu)

    def kvm_online_cpu(self, cpu: HostCpu) -> None:
        """kvm_online_cpu (kvm_main.c) -> kvm_enable_virtualization_cpu -> ... ->
        kvm_user_return_msr_cpu_online: the user-return state read afresh from the
        hardware (``host`` = ``curr`` = what the CPU holds), notifier unregistered."""
        self.kvm_user_return_msr_cpu_online(cpu)

    def kvm_user_return_msr_cpu_online(self, cpu: HostCpu) -> None:
        """Set up the CPU's user-return state; hook the notifier into its exit to user."""
        cpu.uret = KvmUserReturnMsrs(cpu)
        cpu.user_return = self.fire_user_return_notifiers

    def fire_user_return_notifiers(self, cpu: HostCpu, task: Thread) -> None:
        """fire_user_return_notifiers on `cpu` for `task`, as exit_to_user_mode calls it: run
        KVM's notifier if registered (TIF_USER_RETURN_NOTIFY follows the CPU; the strategy
        owns the body, kvm_on_user_return), then check that host user code is about to run
        with host MSR values (the check is tdsim's, not the kernel's)."""
        if cpu.uret.registered:
            self.strategy.user_return(cpu)
        invariants.check_user_mode(self.findings, cpu, task,
                                   self.running_vcpu[cpu.index] is None)


class Kvm:
    """struct kvm of one VM (the VM-wide state the model uses)."""

    def __init__(self, index: int, name: str, flavor: str,
                 interrupts: InterruptConfig | None = None) -> None:
        self.index = index
        self.name = name
        self.flavor = flavor
        self.interrupts = interrupts  # [vm.interrupts]
        self.vcpus: list[Any] = []
        self.bugged = False  # kvm->vm_bugged (KVM_BUG_ON)
        self.stat: Stat | None = None  # host-wide counters (kvm_bug)
        # what the VMM set up with KVM ioctls (from [vmm]): KVM_CAP_EXIT_HYPERCALL,
        # KVM_SET_CPUID2, KVM_X86_SET_MSR_FILTER, KVM_CAP_X86_USER_SPACE_MSR, KVM_IOEVENTFD
        self.hypercall_exit_enabled = True
        self.cpuid: Any = None        # KVM_SET_CPUID2 (tdsim.kvm_cpuid.KvmCpuid)
        self.msr_filter: Any = None   # KVM_X86_SET_MSR_FILTER (tdsim.tdvmcall_msr); None: none
        self.enforce_pv_feature_cpuid = False  # KVM_CAP_ENFORCE_PV_FEATURE_CPUID
        self.lapic_caps: Any = None   # what the vCPUs' APIC model derives from CPUID (lapic)
        self.user_space_msr_mask = 0
        self.io_devices: list[Any] = []  # the VMM's devices (tdsim.vmm.Device)
        # KVM_SET_MEMORY_ATTRIBUTES: the GFN ranges the VMM made shared (tdsim.vmm)
        self.memory_attributes: Any = None

    def kvm_io_bus_write(self, space: str, addr: int, now: int) -> bool:
        """A write on the PIO / MMIO bus: the device there claims it in the kernel if it has
        an ioeventfd (completed in the kernel, the device is signalled); False = exit to
        userspace."""
        for dev in self.io_devices:
            if dev.space == space and dev.base <= addr < dev.end:
                if not dev.ioeventfd:
                    return False
                dev.write(now, addr, 0, 0, True)
                return True
        return False

    def kvm_io_bus_read(self, space: str, addr: int, size: int) -> int | None:
        """A read on the PIO / MMIO bus: the value of an in-kernel device there that answers
        reads (``[[vmm.device]] in_kernel_read``), else None (exit to userspace)."""
        for dev in self.io_devices:
            if dev.space == space and dev.base <= addr < dev.end:
                return dev.kernel_read(addr, size) if dev.in_kernel_read else None
        return None

    def warn_on_once(self, site: str) -> None:
        """WARN_ON_ONCE with its condition true at `site` (the kernel function):
        ``kernel_warn.<site>`` (dmesg would show the first hit of each site per boot)."""
        stat = self.stat
        assert stat is not None
        stat[f"kernel_warn.{site}"] += 1

    def kvm_bug_on(self, vcpu: Any, site: str) -> None:
        """KVM_BUG_ON(cond, kvm) with `cond` true at `site` (the kernel function): counted as
        ``kvm_bug.<site>``; unless the VM is already bugged, the WARN_ON_ONCE inside it
        (``kernel_warn.<site>``) and kvm_vm_bugged."""
        stat = self.stat
        assert stat is not None
        stat[f"kvm_bug.{site}"] += 1
        if not self.bugged:
            stat[f"kernel_warn.{site}"] += 1
            self.kvm_vm_bugged(vcpu)

    def kvm_vm_bugged(self, vcpu: Any) -> None:
        """kvm_vm_bugged: the VM is dead; every vCPU gets KVM_REQ_VM_DEAD (and, if in guest
        mode, an IPI; NO_WAKEUP leaves halted vCPUs asleep)."""
        self.bugged = True
        for other in self.vcpus:
            other.kvm_make_request(KVM_REQ_VM_DEAD)
            if other is not vcpu and other.phase == PH_SEG:
                other.kvm_vcpu_kick()


@dataclass(frozen=True, slots=True)
class KvmX86Ops:
    """struct kvm_x86_ops: the vendor functions the generic run loop calls (for a TD,
    vt_x86_ops in vmx/main.c dispatching to tdx_*).  Each takes the vCPU first."""

    vcpu_load: Callable[[Any, HostCpu], None]
    vcpu_put: Callable[[Any, HostCpu], None]
    prepare_switch_to_guest: Callable[[Any, HostCpu], None]
    vcpu_pre_run: Callable[[Any], int]
    vcpu_run: Callable[[Any, HostCpu], Generator[Any, Any, int]]
    handle_exit_irqoff: Callable[[Any, HostCpu], None]
    handle_exit: Callable[[Any, HostCpu, int], int]
    cancel_injection: Callable[[Any], None]
    inject_nmi: Callable[[Any, HostCpu], None]
    interrupt_allowed: Callable[[Any], bool]
    protected_apic_has_interrupt: Callable[[Any, HostCpu], bool]
    deliver_interrupt: Callable[[Any, int, str], None]
    complete_userspace_io: Callable[[Any, HostCpu], int]


class KvmVcpu(VcpuSegment):
    """struct kvm_vcpu plus the VMM thread that runs it (KVM_RUN in a loop)."""

    kvm_x86_ops: KvmX86Ops  # the vendor's table, set by the vendor class's constructor
    guest: Any  # the guest that runs on it (tdsim.guest, tdsim.program), set likewise

    def __init__(self, env: Environment, scope: VcpuScope, vm: Kvm, pin: int | None,
                 gsbase: int, costs: Costs, kvm: KvmX86, sched: Scheduler, irq: IrqStats,
                 stat: Stat, findings: Findings, tracer: Tracer | None, cpu: HostCpu) -> None:
        super().__init__(env, scope.name, pin, gsbase, stat, tracer, cpu)
        self.init_segment()
        self.scope = scope
        self.vm = vm
        self.vcpu_id = scope.index
        self.costs = costs
        self.kvm = kvm
        self.sched = sched
        self.irq = irq
        self.findings = findings
        # fault injection (tdsim.faults): does kvm_mmu_reload fail at this entry attempt?
        self.mmu_reload_fails: Callable[[], bool] | None = None
        # [host] gs_base_change_hz: the VMM's user code changes this thread's GS base
        self.gs_base_changes: UserGsBaseChanges | None = None
        self.halt_poll_ns = kvm.config.halt_poll_ns
        self.c_enter_guest = costs.vcpu_enter_guest_ns
        self.requests = 0
        self.mode = OUTSIDE_GUEST_MODE
        self.mp_state = KVM_MP_STATE_RUNNABLE
        self.cpu_index = -1              # vcpu->cpu
        self.host_pkru = 0               # vcpu->arch.host_pkru
        self.host_debugctl = 0           # vcpu->arch.host_debugctl
        # today's vcpu_enter_guest reads the host DEBUGCTL at every entry; Linux 6.16's TDX
        # code read it once per load (the strategy says which it models)
        self.debugctl_at_entry = kvm.strategy.host_debugctl_at_entry
        self.guest_state_loaded = False  # vt->guest_state_loaded
        self.sigpending = False
        self.notify_resume = False       # TIF_NOTIFY_RESUME
        self.run_exit_reason = 0         # kvm_run->exit_reason of the last userspace exit
        self.vm_stopped = False          # the VMM stopped the VM: never re-enter KVM_RUN
        self.nmi_queued = 0              # vcpu->arch.nmi_queued
        self.nmi_pending = 0             # vcpu->arch.nmi_pending
        self.nmi_t0: int | None = None   # when the oldest undelivered NMI was injected
        self.pv_unhalted = False         # vcpu->arch.pv.pv_unhalted (KVM_HC_KICK_CPU)
        # (oracle bookkeeping, nmi_accounting: tdsim.irqstats) when each NMI queued or
        # pending was injected, oldest first; the injection time of the NMI written to
        # PEND_NMI (-1: none); NMIs that left PEND_NMI without being delivered
        self.nmi_times: deque[int] = deque()
        self.nmi_pend_t = -1
        self.nmi_vanished: list[int] = []
        self.lapic_timer: Any = None     # apic->lapic_timer (tdsim.lapic.LapicTimer), if any
        self.timer_deadline = 0          # deadline of the last guest timer that fired
        self.oneshot_period = 0          # one-shot (TSC-deadline) guest timer period
        self.t_wake = 0                  # when kvm_vcpu_wake_up last woke it
        # kvm_vcpu_block's final check set TASK_INTERRUPTIBLE (halting); a wake-up after it
        # but before schedule() makes the task runnable again (halt_woken)
        self.halting = False
        self.halt_woken = False
        # vcpu->preempted: kvm_sched_out of a task still runnable (involuntary preemption);
        # cleared by kvm_sched_in
        self.preempted = False
        # the event a KVM_REQ_OUTSIDE_GUEST_MODE kick-and-wait waits on (tdsim.sept); it
        # succeeds when the vCPU passes its IRQ window (late abort, or after the exit)
        self.outside_ack: Any = None

    # --- requests and kicks (virt/kvm/kvm_main.c) --------------------------------------
    def kvm_vcpu_exit_request(self) -> bool:
        """kvm_vcpu_exit_request: kicked, a request bit, or transfer-to-guest work (signal,
        need_resched, notify-resume).  The late check before entry, and the only thing that
        decides a late abort."""
        return (self.mode == EXITING_GUEST_MODE or self.requests != 0 or self.need_resched
                or self.sigpending or self.notify_resume)

    def kvm_make_request(self, req: int) -> None:
        if not self.requests:
            self.raise_exit_work(REQUEST, KVM_REQ_NAMES.get(req, f"request {req:#x}"))
        self.requests |= req

    def raise_signal(self) -> None:
        """signal_wake_up's TIF_SIGPENDING on the vCPU thread (who sends the kick or IPI is
        the caller's business)."""
        if not self.sigpending:
            self.sigpending = True
            self.raise_exit_work(SIGNAL, "a signal (TIF_SIGPENDING)")

    def raise_notify_resume(self) -> None:
        """TIF_NOTIFY_RESUME on the vCPU thread (task work queued; no IPI).  (Simulation) A
        late check still ahead in the current entry segment is told, so that it sees it."""
        if not self.notify_resume:
            self.notify_resume = True
            self.raise_exit_work(NOTIFY_RESUME, "TIF_NOTIFY_RESUME")
        if self.phase == PH_SEG:
            self.disturb(EXIT_REQUEST)

    def kvm_inject_nmi(self) -> None:
        """kvm_inject_nmi: nmi_queued++, KVM_REQ_NMI, kvm_vcpu_kick; the stuck-halt oracle
        checks that a halted vCPU was woken."""
        self.stat["nmi.injected"] += 1
        now = self.env.now
        self.nmi_times.append(now)
        tracer = self.tracer
        if tracer is not None:
            cpu = self.cpu
            tracer.emit(now, "nmi_injected", cpu.index, self.name)
        if self.nmi_t0 is None:
            self.nmi_t0 = now
        self.nmi_queued += 1
        self.kvm_make_request(KVM_REQ_NMI)
        self.kvm_vcpu_kick()
        if self.phase == PH_BLOCKED:
            cpu = self.cpu
            self.findings.record("stuck_halt", cpu.index if cpu else -1, self.name,
                                 "NMI injected but the halted vCPU was not woken",
                                 cause=(now, "NMI injected (kvm_inject_nmi) into the halted "
                                             "vCPU, which was not woken"))

    def kvm_vcpu_kick(self) -> None:
        """kvm_vcpu_kick: wake a waiting vCPU; else, if it is IN_GUEST_MODE, switch it to
        EXITING_GUEST_MODE (kvm_arch_vcpu_should_kick) and send its CPU an IPI, taken as a
        host interrupt after costs.ipi_ns.

        (Simulation) Before the late check the model's ``mode`` runs ahead of the kernel's:
        KVM stores IN_GUEST_MODE only ``in_guest_mode_window_ns`` before the check, so an
        earlier kick finds OUTSIDE_GUEST_MODE and changes nothing but what the late check
        will read; a kick inside the window sends no IPI here (the IPI would be taken in
        the IRQ window the abort opens)."""
        if self.kvm_vcpu_wake_up():
            return
        if self.phase != PH_SEG:
            return
        now = self.env.now
        before_check = now < self.t_late
        if self.mode == IN_GUEST_MODE and (
                not before_check or now >= self.t_late - self.costs.in_guest_mode_window_ns):
            self.mode = EXITING_GUEST_MODE
            self.raise_exit_work(KICK, "a kick (EXITING_GUEST_MODE)")
            self.stat["kicks"] += 1
            if not before_check:
                self.smp_send_reschedule()
        if before_check:
            self.disturb(EXIT_REQUEST)

    def kvm_request_outside_guest_mode(self) -> None:
        """kvm_make_vcpu_request(KVM_REQ_OUTSIDE_GUEST_MODE) for a vCPU not outside guest
        mode: kvm_request_needs_ipi's cmpxchg to EXITING_GUEST_MODE and the call-function
        IPI (the requester waits for it to be acked in the vCPU's IRQ window).

        (Simulation) A vCPU whose entry segment has not reached the late check yet is
        taken as IN_GUEST_MODE already (it will not enter; the real one would see the
        request a few hundred ns later); one in the guest is kicked."""
        if self.phase == PH_SEG and self.env.now < self.t_late:
            self.mode = EXITING_GUEST_MODE
            self.raise_exit_work(KICK, "a KVM_REQ_OUTSIDE_GUEST_MODE kick (EXITING_GUEST_MODE)")
            self.disturb(EXIT_REQUEST)
        elif self.mode == IN_GUEST_MODE:
            self.kvm_vcpu_kick()

    def smp_send_reschedule(self) -> None:
        """The kick's IPI to the vCPU's CPU: a host interrupt there after costs.ipi_ns."""
        cpu = self.cpu
        ev = self.env.timeout(self.costs.ipi_ns)
        tracer = self.tracer
        if tracer is not None:  # the kick, then the IPI's arrival
            tracer.emit(self.env.now, "kick", cpu.index, self.name, by=None)
            ev.callbacks.append(lambda _e: tracer.emit(
                self.env.now, "ipi", cpu.index, self.name, src_cpu=-1, dst_cpu=cpu.index,
                why="kick"))
        ev.callbacks.append(lambda _e: cpu.host_irq(_HOST_IRQ_KICK))

    def kvm_vcpu_wake_up(self) -> bool:
        """kvm_vcpu_wake_up: if the vCPU thread waits in kvm_vcpu_halt/kvm_vcpu_block, make it
        runnable (or end its polling); True if it was waiting."""
        phase = self.phase
        if phase == PH_BLOCKED:
            if self.state == SLEEPING:
                self.stat["halt_wakeup"] += 1
                self.phase = PH_WAIT
                self.t_wake = self.env.now
                self.sched.try_to_wake_up(self)
            return True
        if phase == PH_POLL:
            self.disturb(WAKE)
            return True
        if self.halting:
            if not self.halt_woken:
                # between the final kvm_vcpu_check_block and schedule(): the task is
                # TASK_INTERRUPTIBLE, the wake-up makes it runnable again (no lost wake-up)
                self.stat["halt_wakeup"] += 1
                self.halt_woken = True
                self.t_wake = self.env.now
            return True
        return False

    # --- vcpu_load / vcpu_put ----------------------------------------------------------
    def vcpu_load(self, cpu: HostCpu) -> None:
        """vcpu_load -> kvm_arch_vcpu_load: the vendor vcpu_load, then host_pkru =
        read_pkru() (of the running thread: the hardware PKRU now)."""
        self.stat["vcpu_load"] += 1
        cpu.acc += self.costs.vcpu_load_ns
        self.kvm.running_vcpu[cpu.index] = self
        prev_cpu = self.cpu_index  # vcpu->cpu: -1 if never loaded or flushed since
        self.kvm_x86_ops.vcpu_load(self, cpu)
        self.host_pkru = cpu.pkru
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env.now, "vcpu_load", cpu.index, self.name,
                        migrated=prev_cpu != cpu.index, prev_cpu=prev_cpu)

    def vcpu_put(self, cpu: HostCpu, cause_key: str) -> None:
        """vcpu_put -> kvm_arch_vcpu_put -> vendor vcpu_put (host-state restore)."""
        self.stat[cause_key] += 1  # (vcpu_put: the sum over causes)
        cpu.acc += self.costs.vcpu_put_ns
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env.now, "vcpu_put", cpu.index, self.name,
                        cause=cause_key[15:])
        self.kvm_x86_ops.vcpu_put(self, cpu)
        self.kvm.running_vcpu[cpu.index] = None
        invariants.check_after_put(self.findings, cpu, self)

    def schedule_out(self, cpu: HostCpu, runnable: bool,
                     put_cause: str | None) -> ProcessGenerator:
        """schedule() from KVM context: preempt notifier kvm_sched_out (vcpu_put), context
        switch, and on return kvm_sched_in (vcpu_load, possibly on another CPU)."""
        if put_cause is not None:
            self.preempted = runnable  # kvm_sched_out: current->on_rq
            self.vcpu_put(cpu, put_cause)
        yield from self.spend_kernel(cpu)
        if self.halt_woken:  # woken after the final check: do not sleep
            runnable = True
        self.phase = PH_WAIT if runnable else PH_BLOCKED
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env.now, "vcpu_state", cpu.index, self.name,
                        state="runnable" if runnable else "halted")
        self.sched.switch_out(cpu, self, runnable)
        cpu = yield self.run_event
        if tracer is not None:  # back where it was: KVM_RUN, or the VMM (no put)
            tracer.emit(self.env.now, "vcpu_state", cpu.index, self.name,
                        state="running" if put_cause is not None else "userspace")
        if put_cause is not None:
            self.preempted = False  # kvm_sched_in
            self.vcpu_load(cpu)
        return cpu

    # --- the VMM's vCPU thread ---------------------------------------------------------
    def vcpu_thread(self) -> ProcessGenerator:
        """The VMM's vCPU thread: KVM_RUN, service the exit in userspace, repeat."""
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env.now, "vcpu_state", -1, self.name, state="runnable")
        self.sched.try_to_wake_up(self)
        cpu: HostCpu = yield self.run_event
        cpu.exit_to_user_mode(self)
        while True:
            r = yield from self.kvm_arch_vcpu_ioctl_run(cpu)
            cpu = self.cpu
            if self.vmm_stops_vcpu(r):
                yield from self.vmm_stop(cpu)
                return
            yield from self.vmm_run(cpu)
            cpu = self.cpu

    def vmm_stops_vcpu(self, r: int) -> bool:
        """What the VMM does after a fatal exit: KVM_RUN failed (an errno other than EINTR)
        or reported KVM_EXIT_INTERNAL_ERROR / FAIL_ENTRY / SHUTDOWN / EXCEPTION: like QEMU,
        it stops running this vCPU (it stays stopped until the end of the run).  -EFAULT
        with KVM_EXIT_MEMORY_FAULT is not fatal: QEMU converts the range and re-runs."""
        if r == -arch.EFAULT and self.run_exit_reason == arch.KVM_EXIT_MEMORY_FAULT:
            return False  # QEMU converts the range (implicit conversion) and runs again
        return (r < 0 and r != -arch.EINTR) or self.run_exit_reason in _FATAL_RUN_EXITS

    def vmm_stop(self, cpu: HostCpu) -> ProcessGenerator:
        """The vCPU thread stops for good: it sleeps and nothing wakes it."""
        self.stat["vcpu_stopped"] += 1
        yield from self.spend_kernel(cpu)
        self.phase = PH_STOPPED
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env.now, "vcpu_state", cpu.index, self.name, state="stopped")
        self.sched.switch_out(cpu, self, False)

    def vmm_service_ns(self) -> int:
        """How long the VMM takes to answer the last exit (it writes its answer into
        kvm_run as it does)."""
        raise NotImplementedError

    def vmm_run(self, cpu: HostCpu) -> ProcessGenerator:
        """The userspace VMM services the exit (preemptible user code)."""
        service_ns = self.vmm_service_ns()
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env.now, "vcpu_state", cpu.index, self.name, state="userspace")
        gs = self.gs_base_changes
        if gs is not None:
            gs.in_user_mode(self, cpu, service_ns)
        remaining: int | None = service_ns
        while True:
            assert remaining is not None
            remaining = yield from self.run_user(cpu, VMM, remaining)
            if remaining is None:
                if self.vm_stopped:  # the VMM stopped the VM (TDX fatal error)
                    if tracer is not None:
                        tracer.emit(self.env.now, "vcpu_state", cpu.index, self.name,
                                    state="stopped")
                    self.sched.switch_out(cpu, self, False)
                    yield self.run_event  # nothing wakes it: the thread stays parked
                return
            cpu = yield from self.schedule_out(cpu, True, None)
            cpu.exit_to_user_mode(self)

    # --- KVM_RUN ---------------------------------------------------------------------------
    def kvm_arch_vcpu_ioctl_run(self, cpu: HostCpu) -> Generator[Any, Any, int]:
        """kvm_arch_vcpu_ioctl_run: vcpu_load, complete_userspace_io, vcpu_pre_run, vcpu_run,
        vcpu_put, return to user mode (where the user-return notifier fires)."""
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env.now, "vcpu_state", cpu.index, self.name, state="running")
        cpu.acc += self.costs.kvm_run_ioctl_ns
        self.vcpu_load(cpu)
        ops = self.kvm_x86_ops
        # a completion may return 0 (MapGPA's next chunk): straight back to the VMM
        r = ops.complete_userspace_io(self, cpu)
        if r > 0:
            r = ops.vcpu_pre_run(self)
            if r > 0:
                r = yield from self.vcpu_run(cpu)
        cpu = self.cpu
        self.vcpu_put(cpu, PUT_KVM_RUN_RETURN)
        self.stat[_USERSPACE_EXIT_KEYS[self.run_exit_reason]] += 1  # (and their sum)
        if tracer is not None:
            tracer.emit(self.env.now, "userspace_exit", cpu.index, self.name,
                        reason=arch.KVM_EXIT_NAMES.get(self.run_exit_reason, "?"))
        cpu.exit_to_user_mode(self)
        return r

    def vcpu_run(self, cpu: HostCpu) -> Generator[Any, Any, int]:
        """vcpu_run: enter the guest while runnable, else block; after each round, the
        transfer-to-guest work (xfer_to_guest_mode_handle_work).  Returns 0 (exit to
        userspace) or < 0 (an error, -EINTR for a signal).

        Simplification: after a block the loop re-enters at once; work that became pending
        meanwhile is seen by the late check."""
        stat = self.stat
        while True:
            if self.mp_state != KVM_MP_STATE_RUNNABLE:
                r = yield from self.vcpu_block(cpu)
                cpu = self.cpu
                if r <= 0:
                    return r
                continue
            r = yield from self.vcpu_enter_guest(cpu)
            cpu = self.cpu
            if r <= 0:
                return r
            if self.notify_resume:
                # xfer_to_guest_mode_handle_work runs resume_user_mode_work
                self.notify_resume = False
                stat["notify_resume"] += 1
                cpu.acc += self.costs.notify_resume_ns
            if self.need_resched or self.sigpending:
                if self.sigpending:
                    self.sigpending = False
                    self.run_exit_reason = arch.KVM_EXIT_INTR
                    return -arch.EINTR
                stat["preempted"] += 1
                cpu = yield from self.schedule_out(cpu, True, PUT_PREEMPT)

    def vcpu_enter_guest(self, cpu: HostCpu) -> Generator[Any, Any, int]:
        """vcpu_enter_guest: requests, kvm_mmu_reload, prepare_switch_to_guest, IRQs off and
        IN_GUEST_MODE, the late kvm_vcpu_exit_request check, the vendor run, the IRQ-off
        exit work and the IRQ window, then the vendor exit handler.  Returns 1 to go round
        again, 0 to exit to userspace, < 0 for an error."""
        if self.requests:
            r = self.process_requests(cpu)
            if r <= 0:
                return r
        mmu_reload_fails = self.mmu_reload_fails
        if mmu_reload_fails is not None and mmu_reload_fails():
            # kvm_mmu_reload failed: the error leaves KVM_RUN (an NMI already written to
            # PEND_NMI stays committed)
            self.count_abort(cpu, "mmu_reload_fail")
            self.run_exit_reason = 0
            return -arch.ENOMEM
        ops = self.kvm_x86_ops
        if not self.guest_state_loaded:  # (both vendors return at once while it is loaded)
            ops.prepare_switch_to_guest(self, cpu)
        cpu.acc += self.c_enter_guest  # local_irq_disable, mode, barriers
        self.mode = IN_GUEST_MODE
        # (simulation) the late check is reached when the work accumulated so far is done
        self.t_seg0 = now = self.env._now
        self.t_late = now + cpu.acc
        if self.kvm_vcpu_exit_request():
            r = self.late_abort(cpu)
            yield from self.spend_kernel(cpu)
            return r
        if self.debugctl_at_entry:  # IRQs off, past the late check: get_debugctlmsr()
            self.host_debugctl = cpu.rdmsr(arch.MSR_IA32_DEBUGCTLMSR)
        try:
            exit_fastpath = yield from ops.vcpu_run(self, cpu)
        except LateCheckFired:
            # (simulation) the check fired at its instant after all: nothing after it ran
            r = self.late_abort(cpu)
            ops.cancel_injection(self)
            return r
        self.mode = OUTSIDE_GUEST_MODE
        ops.handle_exit_irqoff(self, cpu)
        if self.outside_ack is not None:
            self.irq_window()
        return ops.handle_exit(self, cpu, exit_fastpath)

    def irq_window(self) -> None:
        """local_irq_enable after the exit: pending host interrupts run, among them the
        call-function IPI of a KVM_REQ_OUTSIDE_GUEST_MODE kick-and-wait, which is acked."""
        ack = self.outside_ack
        if ack is not None:
            self.outside_ack = None
            ack.succeed()

    def exit_request_kind(self) -> str:
        """Which part of kvm_vcpu_exit_request() fired (for late_abort.<kind>)."""
        if self.mode == EXITING_GUEST_MODE:
            return "kick"
        if self.requests:
            return "request"
        if self.sigpending:
            return "signal"
        if self.notify_resume:
            return "notify_resume"
        return "need_resched"

    def late_abort(self, cpu: HostCpu) -> int:
        """The late kvm_vcpu_exit_request() fired: mode back to OUTSIDE_GUEST_MODE, IRQs on
        (the IRQ window), r = 1; the host state stays loaded."""
        kind = self.exit_request_kind()
        self.mode = OUTSIDE_GUEST_MODE
        self.irq_window()
        self.stat[ABORT_KEYS[kind]] += 1  # (late_abort: the sum over paths)
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env.now, "late_abort", cpu.index, self.name, abort=kind)
        return 1

    def count_abort(self, cpu: HostCpu, kind: str) -> None:
        """Count an entry abort that is not the late exit-request check."""
        key = ABORT_KEYS[kind]
        self.stat[key] += 1
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env.now, "late_abort", cpu.index, self.name, abort=key[11:])

    # --- requests ------------------------------------------------------------------------
    def process_requests(self, cpu: HostCpu) -> int:
        """Request processing at the top of vcpu_enter_guest: NMIs (process_nmi and, through
        KVM_REQ_EVENT, the vendor's inject_nmi), then the requests that end the run:
        KVM_REQ_VM_DEAD (-EIO) and the dirty ring's soft limit (KVM_EXIT_DIRTY_RING_FULL;
        the VMM harvests the ring and re-enters).

        Simplification: NMIs are processed before the run-ending requests."""
        if self.requests & KVM_REQ_NMI:
            self.process_nmi(cpu)
        requests = self.requests
        self.requests = 0
        if requests & KVM_REQ_ABORT_MASK:
            if requests & KVM_REQ_VM_DEAD:
                self.count_abort(cpu, "vm_dead")
                self.run_exit_reason = 0
                return -arch.EIO
            self.count_abort(cpu, "request_exit")
            self.run_exit_reason = arch.KVM_EXIT_DIRTY_RING_FULL
            return 0
        return 1

    def process_nmi(self, cpu: HostCpu) -> None:
        """process_nmi: queued NMIs become pending; KVM_REQ_EVENT's
        kvm_check_and_inject_events injects them (kvm_x86_ops.inject_nmi)."""
        self.nmi_pending += self.nmi_queued
        self.nmi_queued = 0
        self.requests |= KVM_REQ_EVENT
        if self.nmi_pending:
            self.kvm_x86_ops.inject_nmi(self, cpu)

    # --- halt ----------------------------------------------------------------------------
    def kvm_vcpu_has_events(self, cpu: HostCpu) -> bool:
        """kvm_vcpu_has_events: an NMI (KVM_REQ_NMI / nmi_pending), or, if the vendor allows
        interrupts, one it reports pending (protected_apic_has_interrupt for a TD)."""
        if self.requests & KVM_REQ_NMI or self.nmi_pending:
            return True
        ops = self.kvm_x86_ops
        return ops.interrupt_allowed(self) and ops.protected_apic_has_interrupt(self, cpu)

    def kvm_arch_vcpu_runnable(self, cpu: HostCpu) -> bool:
        """kvm_arch_vcpu_runnable for a halted vCPU: a PV unhalt (KVM_HC_KICK_CPU set
        pv_unhalted) or kvm_vcpu_has_events."""
        return self.pv_unhalted or self.kvm_vcpu_has_events(cpu)

    def vcpu_block(self, cpu: HostCpu) -> Generator[Any, Any, int]:
        """vcpu_block -> kvm_vcpu_halt -> kvm_vcpu_block: poll, then sleep until
        kvm_vcpu_has_events.

        The check is repeated after the kernel work, right before scheduling out (the
        rcuwait loop's kvm_vcpu_check_block), so a wake-up in between is not lost."""
        if not self.kvm_arch_vcpu_runnable(cpu):
            yield from self.spend_kernel(cpu)
            poll_ns = self.halt_poll_ns
            if poll_ns and not self.kvm_arch_vcpu_runnable(cpu):
                yield from self.halt_poll(cpu, poll_ns)
            self.halting = True  # set_current_state(TASK_INTERRUPTIBLE)
            blocked = False
            while not self.kvm_arch_vcpu_runnable(cpu):  # spurious wake-ups sleep again
                if blocked:
                    self.stat["halt.spurious_wakeup"] += 1
                    self.halting = True
                blocked = True
                self.stat["halt_block"] += 1
                t0 = self.env.now
                cpu = yield from self.schedule_out(cpu, False, PUT_HALT)
                self.halting = self.halt_woken = False
                now = self.env.now
                self.stat["halt_ns"] += now - t0
                # wake-up latency (kvm_vcpu_wake_up -> running again)
                self.stat["halt.wakeup_latency_ns_sum"] += now - self.t_wake
                self.irq.sample("wakeup", self.t_wake, now - self.t_wake, self)
            self.halting = False
        self.pv_unhalted = False
        self.mp_state = KVM_MP_STATE_RUNNABLE
        return 1

    def halt_poll(self, cpu: HostCpu, poll_ns: int) -> ProcessGenerator:
        """kvm_vcpu_halt's polling loop: spin up to `poll_ns` re-checking
        kvm_vcpu_check_block; a wake-up or need_resched ends it early.  Simplified: fixed
        halt_poll_ns (no grow/shrink), the check's cost is paid once at the end."""
        t0 = self.env.now
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(t0, "vcpu_state", cpu.index, self.name, state="halt_poll")
        yield from self.run_poll(poll_ns)
        if tracer is not None:
            tracer.emit(self.env.now, "vcpu_state", cpu.index, self.name, state="running")
        stat = self.stat
        stat["halt.poll_ns"] += self.env.now - t0
        if self.kvm_arch_vcpu_runnable(cpu):
            stat["halt_poll_success"] += 1
        else:
            stat["halt_poll_fail"] += 1


_HOST_IRQ_KICK = HOST_IRQ["kick"]
_USERSPACE_EXIT_KEYS: dict[int, str] = {
    code: f"userspace_exits.reason.{name}" for code, name in arch.KVM_EXIT_NAMES.items()}
_USERSPACE_EXIT_KEYS[0] = "userspace_exits.reason.KVM_EXIT_UNKNOWN"
