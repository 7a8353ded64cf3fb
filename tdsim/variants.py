"""Deliberately wrong kernel variants: test-only switches that break one piece of the modelled
kernel, so a test can show that the oracle meant to catch it does (a check that cannot fail
is no check).  Each is declared once here with what it breaks; `apply` installs it on a built
model (instance attributes and per-vCPU copies of the vendor table, nothing patched in the
classes), so the correct model never pays for it.  Use them through
``tdsim.sim.Simulation(scenario, variants=[...])``; they are never part of a scenario.

With the compiled build (docs/performance.md) a variant that replaces a method on a built
object is refused: compiled callers call the class's method, not an instance attribute (and
the compiled classes have no instance dictionary to put one in).  A variant that replaces
data, such as the vendor table, works there too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _compiled, arch
from .host import RUNNABLE, SLEEPING, Scheduler
from .kvm_tdx import VcpuTdx
from .kvm_vmx import VcpuVmx, vmx_disable_virtualization_cpu

if TYPE_CHECKING:
    from .build import Model
    from .host import HostCpu, Thread


def _delegate(gen: Generator[Any, Any, int], first: Any) -> Generator[Any, Any, int]:
    """``yield from gen`` for a generator already advanced to its first yield (`first`)."""
    item = first
    while True:
        try:
            value = yield item
        except BaseException as e:  # an Interrupt thrown into the process goes on to gen
            try:
                item = gen.throw(e)
            except StopIteration as stop:
                return int(stop.value)
            continue
        try:
            item = gen.send(value)
        except StopIteration as stop:
            return int(stop.value)


def _ignore_wait_for_sept_zap(model: Model) -> None:
    def run_ignoring_flag(vcpu: VcpuTdx, cpu: HostCpu) -> Generator[Any, Any, int]:
        vm = vcpu.tdx_vm
        flag = vm.wait_for_sept_zap
        vm.wait_for_sept_zap = False
        gen = VcpuTdx.tdx_vcpu_run(vcpu, cpu)
        try:
            first = next(gen)  # the entry decision is made before the first yield
        except StopIteration as stop:
            return int(stop.value)
        finally:
            vm.wait_for_sept_zap = flag
        return (yield from _delegate(gen, first))

    for vcpu in model.vcpus:
        if isinstance(vcpu, VcpuTdx):
            vcpu.kvm_x86_ops = dataclasses.replace(vcpu.kvm_x86_ops,
                                                   vcpu_run=run_ignoring_flag)


def _no_outside_ack(model: Model) -> None:
    for vcpu in model.vcpus:
        vcpu.irq_window = lambda: None  # type: ignore[method-assign]


def _lost_wakeup(model: Model) -> None:
    for vcpu in model.vcpus:
        vcpu.kvm_vcpu_wake_up = lambda: False  # type: ignore[method-assign]


def _no_tscdeadline_rearm(model: Model) -> None:
    for vcpu in model.vcpus:
        timer = vcpu.lapic_timer
        if timer is not None:
            timer.kvm_set_lapic_tscdeadline_msr = lambda: None


def _pi_put_no_wakeup_vector(model: Model) -> None:
    for vcpu in model.vcpus:
        if isinstance(vcpu, VcpuTdx):
            def put_sets_sn(cpu: HostCpu, vcpu: VcpuTdx = vcpu) -> None:
                vcpu.pi_sn = True  # pi_set_sn, also for a blocking vCPU
            vcpu.vmx_vcpu_pi_put = put_sets_sn  # type: ignore[method-assign]


def _no_host_xsave_restore(model: Model) -> None:
    for vcpu in model.vcpus:
        if isinstance(vcpu, VcpuTdx):
            vcpu.tdx_load_host_xsave_state = lambda cpu: None  # type: ignore[method-assign]


def _stale_debugctl(model: Model) -> None:
    for vcpu in model.vcpus:
        vcpu.debugctl_at_entry = False  # never read: tdx_vcpu_run restores 0


def _no_late_check(model: Model) -> None:
    for vcpu in model.vcpus:
        # the late check, evaluated when the entry is planned and when something reaches the
        # vCPU before the check's instant (tdsim.segment.VcpuSegment.disturb), never fires
        vcpu.kvm_vcpu_exit_request = lambda: False  # type: ignore[method-assign]


def _no_kick_ipi(model: Model) -> None:
    for vcpu in model.vcpus:
        vcpu.smp_send_reschedule = lambda: None  # type: ignore[method-assign]


def _abort_withdraws_nmi(model: Model) -> None:
    for vcpu in model.vcpus:
        if not isinstance(vcpu, VcpuTdx):
            continue

        def late_abort(cpu: HostCpu, vcpu: VcpuTdx = vcpu,
                       abort: Callable[[HostCpu], int] = vcpu.late_abort) -> int:
            r = abort(cpu)
            if vcpu.module_fields.get("PEND_NMI", 0):
                vcpu.module.tdh_vp_wr(vcpu, cpu, "PEND_NMI", 0)
            return r

        vcpu.late_abort = late_abort  # type: ignore[method-assign]


def _kick_no_wake(model: Model) -> None:
    for vcpu in model.vcpus:
        def kick(vcpu: Any = vcpu, kvm_vcpu_kick: Callable[[], None] = vcpu.kvm_vcpu_kick
                 ) -> None:
            vcpu.kvm_vcpu_wake_up = lambda: False  # (for this kick only)
            try:
                kvm_vcpu_kick()
            finally:
                del vcpu.kvm_vcpu_wake_up

        vcpu.kvm_vcpu_kick = kick  # type: ignore[method-assign]


def _no_pi_self_ipi(model: Model) -> None:
    def vcpu_run(vcpu: VcpuTdx, cpu: HostCpu) -> Generator[Any, Any, int]:
        on = vcpu.pi_on
        vcpu.pi_on = False  # tdx_vcpu_run does not see ON: no self-IPI, no PIR processing
        gen = VcpuTdx.tdx_vcpu_run(vcpu, cpu)
        try:
            first = next(gen)  # the self-IPI decision is made before the first yield
        except StopIteration as stop:
            return int(stop.value)
        finally:
            vcpu.pi_on = on or vcpu.pi_on
        return (yield from _delegate(gen, first))

    for vcpu in model.vcpus:
        if isinstance(vcpu, VcpuTdx):
            vcpu.kvm_x86_ops = dataclasses.replace(vcpu.kvm_x86_ops, vcpu_run=vcpu_run)


def _no_flush_on_migration(model: Model) -> None:
    def vcpu_load(vcpu: VcpuTdx, cpu: HostCpu) -> None:
        if vcpu.cpu_index != cpu.index:  # tdx_vcpu_load without tdx_flush_vp_on_cpu
            vcpu.percpu.associated_tdvcpus[cpu.index].append(vcpu)
            vcpu.cpu_index = cpu.index

    for vcpu in model.vcpus:
        if isinstance(vcpu, VcpuTdx):
            vcpu.kvm_x86_ops = dataclasses.replace(vcpu.kvm_x86_ops, vcpu_load=vcpu_load)


def _refusal_keeps_exit_reason(model: Model) -> None:
    for vcpu in model.vcpus:
        if not isinstance(vcpu, VcpuTdx):
            continue

        def exit_reason(ret: int, vcpu: VcpuTdx = vcpu) -> int:
            if vcpu.seg_status != arch.TDX_SUCCESS:  # the TD was not entered
                # the cached exit fields stay the previous exit's: the reason, and the
                # interruption information tdx_vcpu_enter_exit reads from R9 next
                vcpu.vp_enter_args.r9 = vcpu.exit_intr_info
                return vcpu.exit_reason
            return VcpuTdx.tdx_to_vmx_exit_reason(vcpu, ret)

        vcpu.tdx_to_vmx_exit_reason = exit_reason  # type: ignore[method-assign]


def _dispatch_on_busy_cpu(model: Model) -> None:
    sched = model.sched

    def wake_up(t: Thread) -> None:
        if t.state != SLEEPING:
            return
        t.state = RUNNABLE
        cpu = sched.select_cpu(t)
        if cpu.curr is not None and not sched.idle:  # no CPU idle: "take this one"
            sched._dispatch(cpu, t)
            return
        t.state = SLEEPING
        Scheduler.try_to_wake_up(sched, t)

    sched.try_to_wake_up = wake_up  # type: ignore[method-assign]


def _pull_without_dequeue(model: Model) -> None:
    sched = model.sched

    def pull(cpu: HostCpu) -> Thread | None:
        index = sched._next_after(sched.pullable, cpu.index)
        if index is None:
            return None
        # idle balancing takes a runnable thread and forgets to take it off its queue
        return next((t for t in sched.cpus[index].rq if t.pin is None), None)

    sched._pull = pull  # type: ignore[method-assign]


def _offline_skips_flush(model: Model) -> None:
    # kvm_offline_cpu without tdx_disable_virtualization_cpu's flushes
    vmx = [v for v in model.vcpus if isinstance(v, VcpuVmx)]
    model.kvm.disable_virtualization_cpu = (
        lambda cpu: vmx_disable_virtualization_cpu(vmx, cpu))


def _offline_keeps_uret(model: Model) -> None:
    # kvm_arch_disable_virtualization_cpu without drop_user_return_notifiers
    model.kvm.drop_user_return_notifiers = lambda cpu: None  # type: ignore[method-assign]


@dataclass(frozen=True)
class Variant:
    """One deliberately wrong variant of the modelled kernel."""

    name: str
    doc: str
    apply: Callable[[Model], None]
    replaces_methods: bool = True  # on built objects: pure Python only (see above)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("ignore_wait_for_sept_zap", "tdx_vcpu_run does not check wait_for_sept_zap: "
            "vCPUs enter while a SEPT zap retry needs them out (td_entry_during_zap)",
            _ignore_wait_for_sept_zap, replaces_methods=False),
    Variant("no_outside_ack", "the IRQ window after an exit or a late abort does not "
            "acknowledge KVM_REQ_OUTSIDE_GUEST_MODE's IPI (zap_stuck)", _no_outside_ack),
    Variant("lost_wakeup", "kvm_vcpu_wake_up does nothing: a halted vCPU is never woken "
            "(stuck_halt)", _lost_wakeup),
    Variant("no_late_check", "vcpu_enter_guest has no late kvm_vcpu_exit_request() check: "
            "kicks, requests, signals, need_resched and notify-resume raised before it are "
            "carried into the guest (entry_with_exit_request)", _no_late_check),
    Variant("no_kick_ipi", "kvm_vcpu_kick switches a vCPU in guest mode to "
            "EXITING_GUEST_MODE but sends no IPI: the guest runs on until its own next exit "
            "(kick_exit_delay)", _no_kick_ipi),
    Variant("kick_no_wake", "kvm_vcpu_kick does not wake a halted vCPU (an NMI injected "
            "into it is not taken until something else wakes it: stuck_halt)",
            _kick_no_wake),
    Variant("no_pi_self_ipi", "tdx_vcpu_run does not send the posted-interrupt self-IPI: "
            "a vector posted before the TD entry stays pending after it (lost_interrupt)",
            _no_pi_self_ipi, replaces_methods=False),
    Variant("no_flush_on_migration", "tdx_vcpu_load of a vCPU that moved does not "
            "TDH.VP.FLUSH it on its old CPU (entry_on_associated_vcpu)",
            _no_flush_on_migration, replaces_methods=False),
    Variant("refusal_keeps_exit_reason", "when TDH.VP.ENTER refuses the entry KVM keeps "
            "the previous exit's reason instead of deriving it from the status: a stale "
            "EXCEPTION_NMI or EXTERNAL_INTERRUPT is handled again (spurious_nmi, "
            "spurious_external_interrupt)", _refusal_keeps_exit_reason),
    Variant("dispatch_on_busy_cpu", "with no CPU idle, a woken thread is dispatched on "
            "its CPU over the running one (cpu_runs_one_thing; tdsim's own CPU-time check "
            "then fails at the end of the run)", _dispatch_on_busy_cpu),
    Variant("pull_without_dequeue", "idle balancing runs a queued thread without taking "
            "it off its queue, so its CPU dispatches it again (vcpu_on_one_cpu; the run "
            "then fails at once: a thread cannot be started twice)", _pull_without_dequeue),
    Variant("abort_withdraws_nmi", "a late abort withdraws the NMI already written to "
            "PEND_NMI (TDH.VP.WR PEND_NMI = 0) without queueing it again: the NMI is lost "
            "(nmi_accounting)", _abort_withdraws_nmi),
    Variant("no_tscdeadline_rearm", "KVM drops the guest's WRMSR(IA32_TSC_DEADLINE): a "
            "one-shot guest timer is never re-armed (lost_interrupt)",
            _no_tscdeadline_rearm),
    Variant("pi_put_no_wakeup_vector", "vmx_vcpu_pi_put never switches a blocking vCPU "
            "to the wake-up vector (it sets SN on every put): with device posting, a device "
            "interrupt to a halted vCPU only sets its PIR bit and nothing wakes it "
            "(stuck_halt)", _pi_put_no_wakeup_vector),
    Variant("no_host_xsave_restore", "tdx_vcpu_run skips tdx_load_host_xsave_state: host "
            "user code runs with the TD's XCR0 / IA32_XSS / PKRU (host_state_leak)",
            _no_host_xsave_restore),
    Variant("offline_skips_flush", "a CPU goes offline without "
            "tdx_disable_virtualization_cpu: the TD vCPUs associated with it are never "
            "TDH.VP.FLUSHed (offline_cpu_state; the next entry elsewhere is refused: "
            "entry_on_associated_vcpu)", _offline_skips_flush, replaces_methods=False),
    Variant("offline_keeps_uret", "a CPU goes offline without drop_user_return_notifiers: "
            "its user-return MSRs keep the TDX module's values (offline_cpu_state)",
            _offline_keeps_uret),
    Variant("stale_debugctl", "the host DEBUGCTL is never read, so tdx_vcpu_run restores a "
            "stale 0 (host_state_leak when the host uses DEBUGCTL)", _stale_debugctl,
            replaces_methods=False),
)}


def apply(model: Model, names: list[str] | tuple[str, ...]) -> None:
    """Install the named variants on `model` (unknown names, and with the compiled build
    those that replace methods, raise ValueError)."""
    for name in names:
        variant = VARIANTS.get(name)
        if variant is None:
            raise ValueError(f"unknown model variant {name!r} (known: "
                             f"{', '.join(sorted(VARIANTS))})")
        if variant.replaces_methods and _compiled.ACTIVE:
            raise ValueError(f"model variant {name!r} replaces methods of built objects, "
                             "which compiled code does not call: run it in pure Python "
                             "(without TDSIM_COMPILED / --compiled)")
        variant.apply(model)
