"""Fault injection: every late entry abort path (reference §1.3 A-G) as a scenario knob.

An *abort* is any point where KVM has already done entry work (requests, NMI injection,
``prepare_switch_to_guest``, IRQs off) but the guest does not run.  The ``[faults]`` table
switches each path on:

* asynchronous sources, as rates per simulated second (one Poisson process per vCPU, or per TD
  for SEPT zaps): a kick, a request bit from another vCPU, a signal from the VMM, need_resched,
  notify-resume (abort C, the late ``kvm_vcpu_exit_request`` check); a request whose
  processing exits to userspace (abort A); a SEPT zap retry raising ``wait_for_sept_zap``
  (abort D);
* per-attempt outcomes, as probabilities: ``kvm_mmu_reload`` failure (abort B, per entry
  attempt) and what TDH.VP.ENTER returns (per SEAMCALL): module refusals (abort E), the
  zero-step synthesized EPT violation (abort F), SEAMCALL software errors, failed VM entry
  (abort G), non-recoverable statuses, detail-less error exits (the ``[kvm] exit_reason``
  study) and a genuine EPT_MISCONFIG.

Every source draws from its own named stream (``faults.<name>`` or
``faults.<name>.<vcpu>``), so switching one knob on never reshuffles another, and strategy
comparisons stay paired.  Everything is off by default; a run with no fault enabled schedules
no extra event and draws nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import arch
from .host import RUNNING
from .kvm_x86 import (
    KVM_REQ_DIRTY_RING_SOFT_FULL,
    KVM_REQ_EVENT,
    KVM_REQ_VM_DEAD,
    PH_KERNEL,
    PH_SEG,
    PH_STOPPED,
    PH_WAIT,
)
from .rng import exp_ns, stream

if TYPE_CHECKING:
    from .sim import Simulation

# Per-SEAMCALL module outcomes, in the order they are drawn.  The first six are refusals:
# the SEAMCALL returns without loading guest state (host MSRs untouched, reference §1.3 E/F).
# The last four enter the TD, which exits at once with the drawn status.
_MODULE_KNOBS = ("operand_busy", "tsc_rollback", "inconsistent_msr", "vcpu_associated",
                 "sw_error", "zero_step", "failed_vmentry", "non_recoverable", "error_exit",
                 "genuine_ept_misconfig")
_SW_ERRORS = (arch.TDX_SEAMCALL_VMFAILINVALID, arch.TDX_SEAMCALL_GP, arch.TDX_SEAMCALL_UD)
# Refusals raised after check_and_associate_vcpu (reference §3.4 step 3): the vCPU is
# associated with the LP even though the TD is not entered.
ASSOCIATES = frozenset({"zero_step", "tsc_rollback", "inconsistent_msr", "operand_busy_late"})
# Zero-step synthesized EPT violation (reference §1.3 F): RCX = write-access qualification.
EPT_VIOLATION_WRITE_QUAL = 0x2
ZERO_STEP_GPA = 0x7FF000

_ASYNC_KNOBS = ("request_exit", "kick", "request", "signal", "need_resched", "notify_resume")
FAULT_KEYS = {k: f"faults.{k}" for k in ("non_recoverable", "error_exit",
                                         "genuine_ept_misconfig")}


class Faults:
    """The fault injector of one run: its knobs, its streams and its processes."""

    def __init__(self, sim: Simulation, cfg: dict) -> None:
        self.sim = sim
        self.cfg = cfg
        seed = sim.seed
        self.busy_ids = list(cfg["operand_busy_ids"])
        self.low_bits = list(cfg["error_exit_low_bits"])
        # (probability, kind, stream) for each enabled module outcome
        self.module = [(cfg[name], name, stream(seed, f"faults.{name}"))
                       for name in _MODULE_KNOBS if cfg[name] > 0]
        self.module_on = bool(self.module)
        self.mmu_reload_fail = cfg["mmu_reload_fail"]
        self.mmu_rng = stream(seed, "faults.mmu_reload_fail") if self.mmu_reload_fail else None
        self.detail_rng = stream(seed, "faults.details")

    # --- processes -------------------------------------------------------------------------
    def start(self) -> None:
        """Start one Poisson process per enabled asynchronous source and vCPU (or TD)."""
        sim = self.sim
        env = sim.env
        cfg = self.cfg
        for name in _ASYNC_KNOBS:
            rate = cfg[name + "_hz"]
            if rate <= 0:
                continue
            for vcpu in sim.vcpus:
                rng = stream(sim.seed, f"faults.{name}.{vcpu.vm.name}.vcpu{vcpu.vcpu_id}")
                env.process(self._poisson(rng, rate, getattr(self, "inject_" + name), vcpu))
        if cfg["sept_zap_hz"] > 0:
            hold = round(cfg["sept_zap_us"] * 1000)
            for vm in sim.vms:
                if vm.flavor == "tdx":
                    rng = stream(sim.seed, f"faults.sept_zap.{vm.name}")
                    env.process(self._sept_zap(rng, cfg["sept_zap_hz"], hold, vm))

    def _poisson(self, rng, rate_hz: float, inject, vcpu):
        env = self.sim.env
        mean_ns = 1e9 / rate_hz
        while True:
            yield env.timeout(exp_ns(rng, mean_ns))
            if vcpu.phase != PH_STOPPED:
                inject(vcpu)

    def _sept_zap(self, rng, rate_hz: float, hold_ns: int, vm):
        """A SEPT-zap SEAMCALL that hit OPERAND_BUSY and is retried with no vCPU in the TD
        (tdh_do_no_vcpus, reference §7.3): raise ``wait_for_sept_zap``, kick every vCPU out
        with KVM_REQ_OUTSIDE_GUEST_MODE (no request bit, no wake-up), hold, clear.

        Simplification: a vCPU that planned its entry before the flag rose but had not yet
        reached the late check (a window of a few hundred ns) still enters."""
        env = self.sim.env
        mean_ns = 1e9 / rate_hz
        while True:
            yield env.timeout(exp_ns(rng, mean_ns))
            if vm.wait_for_sept_zap:
                continue
            vm.wait_for_sept_zap = True
            self.sim.host_stat["faults.sept_zap"] += 1
            for vcpu in vm.vcpus:
                if vcpu.phase == PH_SEG:
                    vcpu.kvm_vcpu_kick()
            yield env.timeout(hold_ns)
            vm.wait_for_sept_zap = False

    # --- asynchronous injections (abort A and C) --------------------------------------------
    def inject_request_exit(self, vcpu) -> None:
        """Abort A: the dirty ring hit its soft limit (KVM_REQ_DIRTY_RING_SOFT_FULL)."""
        vcpu.stat["faults.request_exit"] += 1
        vcpu.kvm_make_request(KVM_REQ_DIRTY_RING_SOFT_FULL)
        if vcpu.phase == PH_SEG:
            vcpu.kvm_vcpu_kick()

    def inject_kick(self, vcpu) -> None:
        """Abort C(a): another thread kicks the vCPU (no request bit)."""
        vcpu.stat["faults.kick"] += 1
        if vcpu.phase == PH_SEG:
            vcpu.kvm_vcpu_kick()

    def inject_request(self, vcpu) -> None:
        """Abort C(b): another vCPU makes a request (KVM_REQ_EVENT) and kicks."""
        vcpu.stat["faults.request"] += 1
        vcpu.kvm_make_request(KVM_REQ_EVENT)
        if vcpu.phase == PH_SEG:
            vcpu.kvm_vcpu_kick()

    def inject_signal(self, vcpu) -> None:
        """Abort C(c): the VMM signals the vCPU thread (signal_wake_up -> kick_process).

        Only a thread on its way into or in the guest is modelled; a signal that finds the
        thread in user mode or halted is counted and dropped (the VMM handles it there)."""
        phase = vcpu.phase
        if phase in (PH_SEG, PH_KERNEL, PH_WAIT):
            vcpu.stat["faults.signal"] += 1
            vcpu.sigpending = True
            if phase == PH_SEG:
                vcpu.notify_host_irq()
        else:
            vcpu.stat["faults.signal.dropped"] += 1

    def inject_need_resched(self, vcpu) -> None:
        """Abort C(d): a wake-up sets need_resched on the vCPU's CPU.

        Simplification: the woken task's run is not modelled; the vCPU thread goes through
        schedule() (vcpu_put, context switch, vcpu_load) and runs again."""
        if vcpu.state == RUNNING and vcpu.cpu.curr is vcpu:
            vcpu.stat["faults.need_resched"] += 1
            self.sim.sched.resched_curr(vcpu.cpu)

    def inject_notify_resume(self, vcpu) -> None:
        """Abort C(e): TIF_NOTIFY_RESUME (e.g. task work) is queued; no IPI."""
        vcpu.stat["faults.notify_resume"] += 1
        vcpu.notify_resume = True
        if vcpu.phase == PH_SEG and self.sim.env.now < vcpu.t_late:
            vcpu.notify_host_irq()  # the late check, still ahead, will see it

    # --- per-attempt outcomes --------------------------------------------------------------
    def mmu_reload_fails(self) -> bool:
        """Abort B: does kvm_mmu_reload fail at this entry attempt?"""
        return self.mmu_rng is not None and self.mmu_rng.random() < self.mmu_reload_fail

    def vp_enter_outcome(self, vcpu) -> tuple[int, int | None, str | None]:
        """Draw what TDH.VP.ENTER does this time: (refusal status or TDX_SUCCESS, exit status
        of an entered-and-failed TD or None, kind or None).  Every enabled stream draws once
        per SEAMCALL, so streams stay aligned whatever fires first."""
        kind = None
        for p, name, rng in self.module:
            if rng.random() < p and kind is None:
                kind = name
        if kind is None:
            return arch.TDX_SUCCESS, None, None
        rng = self.detail_rng
        if kind == "operand_busy":
            op = rng.choice(self.busy_ids)
            if op in (arch.TDX_OPERAND_ID_SEPT, arch.TDX_OPERAND_ID_TD_EPOCH):
                kind = "operand_busy_late"  # after association (§3.4 steps 5-6)
            return arch.TDX_OPERAND_BUSY | op, None, kind
        if kind == "tsc_rollback":
            return arch.TDX_TSC_ROLLBACK, None, kind
        if kind == "inconsistent_msr":
            return arch.TDX_INCONSISTENT_MSR, None, kind
        if kind == "vcpu_associated":
            return arch.TDX_VCPU_ASSOCIATED, None, kind
        if kind == "sw_error":
            return rng.choice(_SW_ERRORS), None, kind
        if kind == "zero_step":
            return arch.TDX_SUCCESS | arch.EXIT_REASON_EPT_VIOLATION, None, kind
        if kind == "failed_vmentry":
            return arch.TDX_SUCCESS, (arch.TDX_NON_RECOVERABLE_TD
                                      | arch.VMX_EXIT_REASONS_FAILED_VMENTRY
                                      | arch.EXIT_REASON_INVALID_STATE), kind
        if kind == "non_recoverable":
            return arch.TDX_SUCCESS, (arch.TDX_NON_RECOVERABLE_VCPU
                                      | arch.EXIT_REASON_TRIPLE_FAULT), kind
        if kind == "error_exit":
            return arch.TDX_SUCCESS, arch.TDX_TD_EXIT_BEFORE_L2_ENTRY | rng.choice(
                self.low_bits), kind
        return arch.TDX_SUCCESS, arch.TDX_SUCCESS | arch.EXIT_REASON_EPT_MISCONFIG, kind

    # --- KVM_BUG_ON ------------------------------------------------------------------------
    def kvm_vm_bugged(self, vm, vcpu) -> None:
        """KVM_BUG_ON -> kvm_vm_bugged: the VM is dead; every vCPU gets KVM_REQ_VM_DEAD (and,
        if in guest mode, an IPI; NO_WAKEUP leaves halted vCPUs asleep)."""
        self.sim.host_stat["kvm_bug"] += 1
        vm.bugged = True
        for other in vm.vcpus:
            other.kvm_make_request(KVM_REQ_VM_DEAD)
            if other is not vcpu and other.phase == PH_SEG:
                other.kvm_vcpu_kick()
