"""Fault injection: every late entry abort path (docs/late-aborts.md) as a scenario knob.

An *abort* is any point where KVM has already done entry work (requests, NMI injection,
``prepare_switch_to_guest``, IRQs off) but the guest does not run.  Each ``[faults]`` knob is
declared once, in `FAULT_KNOBS` (the scenario schema and the docs table derive from it):

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

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import arch
from .arch import KVM_REQ_DIRTY_RING_SOFT_FULL, KVM_REQ_EVENT
from .host import HOST_IRQ, RUNNING, ProcessGenerator
from .rng import exp_ns, stream
from .segment import PH_KERNEL, PH_SEG, PH_STOPPED, PH_WAIT

if TYPE_CHECKING:
    from .clock import Environment
    from .host import Scheduler, Stat
    from .kvm_tdx import KvmTdx
    from .kvm_x86 import KvmVcpu

_HOST_IRQ_OTHER = HOST_IRQ["other"]
# A recording's wrapper around a source's injection function (`tdsim.choices`): called with
# the source's name and the function, returns the function to call instead.
Tap = Callable[[str, Callable[..., None]], Callable[..., None]]


# --- asynchronous injections (aborts A and C) ---------------------------------------------
def inject_request_exit(vcpu: KvmVcpu, sched: Scheduler) -> None:
    """Abort A: the dirty ring hit its soft limit (KVM_REQ_DIRTY_RING_SOFT_FULL)."""
    vcpu.stat["faults.request_exit"] += 1
    vcpu.kvm_make_request(KVM_REQ_DIRTY_RING_SOFT_FULL)
    if vcpu.phase == PH_SEG:
        vcpu.kvm_vcpu_kick()


def inject_kick(vcpu: KvmVcpu, sched: Scheduler) -> None:
    """Abort C(a): another thread kicks the vCPU (no request bit)."""
    vcpu.stat["faults.kick"] += 1
    if vcpu.phase == PH_SEG:
        vcpu.kvm_vcpu_kick()


def inject_request(vcpu: KvmVcpu, sched: Scheduler) -> None:
    """Abort C(b): another vCPU makes a request (KVM_REQ_EVENT) and kicks."""
    vcpu.stat["faults.request"] += 1
    vcpu.kvm_make_request(KVM_REQ_EVENT)
    if vcpu.phase == PH_SEG:
        vcpu.kvm_vcpu_kick()


def inject_signal(vcpu: KvmVcpu, sched: Scheduler) -> None:
    """Abort C(c): the VMM signals the vCPU thread (signal_wake_up -> kick_process, an IPI
    to its CPU).

    Only a thread on its way into or in the guest is modelled; a signal that finds the
    thread in user mode or halted is counted and dropped (the VMM handles it there)."""
    phase = vcpu.phase
    if phase in (PH_SEG, PH_KERNEL, PH_WAIT):
        vcpu.stat["faults.signal"] += 1
        vcpu.raise_signal()
        if phase == PH_SEG:
            vcpu.disturb(_HOST_IRQ_OTHER)
    else:
        vcpu.stat["faults.signal.dropped"] += 1


def inject_need_resched(vcpu: KvmVcpu, sched: Scheduler) -> None:
    """Abort C(d): a wake-up sets need_resched on the vCPU's CPU.

    Simplification: the woken task's run is not modelled; the vCPU thread goes through
    schedule() (vcpu_put, context switch, vcpu_load) and runs again."""
    cpu = vcpu.cpu
    if vcpu.state == RUNNING and cpu is not None and cpu.curr is vcpu:
        vcpu.stat["faults.need_resched"] += 1
        sched.resched_curr(cpu)


def inject_notify_resume(vcpu: KvmVcpu, sched: Scheduler) -> None:
    """Abort C(e): TIF_NOTIFY_RESUME (e.g. task work) is queued; no IPI."""
    vcpu.stat["faults.notify_resume"] += 1
    vcpu.raise_notify_resume()  # (the late check, if still ahead, will see it)


@dataclass(frozen=True)
class FaultKnob:
    """One ``[faults]`` knob: its key, the abort path it exercises, what its value is."""

    key: str
    path: str   # the abort path (docs/late-aborts.md), "" for an exit-status fault
    kind: str   # "rate": per simulated second (per vCPU; per TD for sept_zap_hz);
    #             "probability": per TDH.VP.ENTER (per entry attempt for mmu_reload_fail)
    doc: str
    inject: Callable[[KvmVcpu, Scheduler], None] | None = None  # a rate knob's event

    @property
    def name(self) -> str:
        """The knob without its unit (``kick`` for ``kick_hz``): metric and stream name."""
        return self.key[:-3] if self.key.endswith("_hz") else self.key


FAULT_KNOBS: tuple[FaultKnob, ...] = (
    FaultKnob("request_exit_hz", "A", "rate", "a request whose processing exits to "
              "userspace (KVM_REQ_DIRTY_RING_SOFT_FULL -> KVM_EXIT_DIRTY_RING_FULL)",
              inject_request_exit),
    FaultKnob("mmu_reload_fail", "B", "probability", "kvm_mmu_reload fails (root "
              "allocation); the error propagates out of KVM_RUN and the VMM stops the vCPU"),
    FaultKnob("kick_hz", "C(a)", "rate", "another thread kicks the vCPU (kvm_vcpu_kick)",
              inject_kick),
    FaultKnob("request_hz", "C(b)", "rate", "another vCPU sets a request bit "
              "(KVM_REQ_EVENT) and kicks", inject_request),
    FaultKnob("signal_hz", "C(c)", "rate", "the VMM signals the vCPU thread "
              "(-> KVM_EXIT_INTR)", inject_signal),
    FaultKnob("need_resched_hz", "C(d)", "rate", "need_resched is set on the vCPU's CPU",
              inject_need_resched),
    FaultKnob("notify_resume_hz", "C(e)", "rate", "TIF_NOTIFY_RESUME work is queued for the "
              "vCPU thread", inject_notify_resume),
    FaultKnob("sept_zap_hz", "D", "rate", "per TD, a SEPT zap retry raises "
              "kvm_tdx->wait_for_sept_zap and kicks every vCPU"),
    FaultKnob("operand_busy", "E", "probability", "TDH.VP.ENTER returns TDX_OPERAND_BUSY"),
    FaultKnob("tsc_rollback", "E", "probability", "TDH.VP.ENTER returns TDX_TSC_ROLLBACK"),
    FaultKnob("inconsistent_msr", "E", "probability",
              "TDH.VP.ENTER returns TDX_INCONSISTENT_MSR"),
    FaultKnob("vcpu_associated", "E", "probability",
              "TDH.VP.ENTER returns TDX_VCPU_ASSOCIATED"),
    FaultKnob("sw_error", "E", "probability", "the SEAMCALL itself fails (VMFAILINVALID, "
              "#GP, #UD, drawn evenly)"),
    FaultKnob("zero_step", "F", "probability", "the module synthesizes an EPT-violation exit "
              "in zero-step mode without entering (status 48, guest MSRs not loaded)"),
    FaultKnob("failed_vmentry", "G", "probability", "VM entry fails (bit 31; "
              "NON_RECOVERABLE_TD | 0x80000021)"),
    FaultKnob("non_recoverable", "", "probability", "the TD exits with "
              "TDX_NON_RECOVERABLE_VCPU | TRIPLE_FAULT"),
    FaultKnob("error_exit", "", "probability", "the TD exits with TDX_TD_EXIT_BEFORE_L2_ENTRY, "
              "a status without detail that only a TD with L2 VMs gets (every TD needs "
              "td_partitioning = true), whose low bits are drawn from error_exit_low_bits: "
              "the exit_reason study"),
    FaultKnob("genuine_ept_misconfig", "", "probability", "TDH.VP.ENTER returns exactly 49 "
              "(a genuine EPT_MISCONFIG: a KVM bug for a TD)"),
)
KNOBS: dict[str, FaultKnob] = {k.key: k for k in FAULT_KNOBS}

# TDH.VP.ENTER outcomes, in the order they are drawn: the refusals (the SEAMCALL returns
# without loading guest state), then those that enter the TD and exit at once.
MODULE_KNOBS = tuple(k.key for k in FAULT_KNOBS
                     if k.kind == "probability" and k.key != "mmu_reload_fail")
SW_ERRORS = (arch.TDX_SEAMCALL_VMFAILINVALID, arch.TDX_SEAMCALL_GP, arch.TDX_SEAMCALL_UD)


class Faults:
    """The fault injector of one run: its knobs, its streams and its processes."""

    def __init__(self, env: Environment, seed: int, cfg: Mapping[str, Any],
                 sched: Scheduler, host_stat: Stat) -> None:
        self.env = env
        self.seed = seed
        self.cfg = cfg
        self.sched = sched
        self.host_stat = host_stat
        self.busy_ids = list(cfg["operand_busy_ids"])
        self.low_bits = list(cfg["error_exit_low_bits"])
        # (probability, kind, stream) for each enabled module outcome
        self.module = [(cfg[name], name, stream(seed, f"faults.{name}"))
                       for name in MODULE_KNOBS if cfg[name] > 0]
        self.mmu_reload_fail = cfg["mmu_reload_fail"]
        self.mmu_rng = stream(seed, "faults.mmu_reload_fail") if self.mmu_reload_fail else None
        self.detail_rng = stream(seed, "faults.details")

    # --- processes -------------------------------------------------------------------------
    def start(self, vcpus: Sequence[KvmVcpu], vms: Sequence[Any], tap: Tap | None = None
              ) -> None:
        """Start one Poisson process per enabled asynchronous source and vCPU (or TD).
        `tap` (recording, `tdsim.choices`) wraps each source's injection when given."""
        env = self.env
        cfg = self.cfg
        for knob in FAULT_KNOBS:
            if knob.inject is None or cfg[knob.key] <= 0:
                continue
            inject = knob.inject if tap is None else tap(knob.name, knob.inject)
            for vcpu in vcpus:
                rng = stream(self.seed, f"faults.{knob.name}.{vcpu.name}")
                env.process(self._poisson(rng, cfg[knob.key], inject, vcpu))
        if cfg["sept_zap_hz"] > 0:
            hold = round(cfg["sept_zap_us"] * 1000)
            for vm in vms:
                if vm.flavor == "tdx":
                    rng = stream(self.seed, f"faults.sept_zap.{vm.name}")
                    env.process(self._sept_zap(rng, cfg["sept_zap_hz"], hold, vm, tap))

    def _poisson(self, rng: random.Random, rate_hz: float,
                 inject: Callable[[KvmVcpu, Scheduler], None],
                 vcpu: KvmVcpu) -> ProcessGenerator:
        env = self.env
        mean_ns = 1e9 / rate_hz
        while True:
            yield env.timeout(exp_ns(rng, mean_ns))
            if vcpu.phase != PH_STOPPED:
                inject(vcpu, self.sched)

    def _sept_zap(self, rng: random.Random, rate_hz: float, hold_ns: int,
                  vm: KvmTdx, tap: Tap | None) -> ProcessGenerator:
        """Poisson arrivals of `sept_zap_retry` on one TD."""
        env = self.env
        mean_ns = 1e9 / rate_hz
        raise_flag = self.raise_wait_for_sept_zap
        if tap is not None:
            raise_flag = tap("sept_zap", raise_flag)
        while True:
            yield env.timeout(exp_ns(rng, mean_ns))
            yield from self.sept_zap_retry(vm, hold_ns, raise_flag)

    def sept_zap_retry(self, vm: KvmTdx, hold_ns: int,
                       raise_flag: Callable[[KvmTdx], None] | None = None) -> ProcessGenerator:
        """A SEPT-zap SEAMCALL that hit OPERAND_BUSY and is retried with no vCPU in the TD
        (tdh_do_no_vcpus): raise ``wait_for_sept_zap``, kick every vCPU out with
        KVM_REQ_OUTSIDE_GUEST_MODE (no request bit, no wake-up), hold, clear.  Nothing
        happens if the flag is already up (another retry holds it).

        Simplification: a vCPU that planned its entry before the flag rose but had not yet
        reached the late check (a window of a few hundred ns) still enters."""
        if vm.wait_for_sept_zap:
            return
        (raise_flag or self.raise_wait_for_sept_zap)(vm)
        yield self.env.timeout(hold_ns)
        vm.wait_for_sept_zap = False

    def raise_wait_for_sept_zap(self, vm: KvmTdx) -> None:
        """The retry's start: the flag goes up and every vCPU in the TD is kicked out."""
        vm.wait_for_sept_zap = True
        self.host_stat["faults.sept_zap"] += 1
        for vcpu in vm.vcpus:
            if vcpu.phase == PH_SEG:
                vcpu.kvm_vcpu_kick()

    # --- per-attempt outcomes --------------------------------------------------------------
    def mmu_reload_fails(self) -> bool:
        """Abort B: does kvm_mmu_reload fail at this entry attempt?"""
        return self.mmu_rng is not None and self.mmu_rng.random() < self.mmu_reload_fail

    def vp_enter_outcome(self, vcpu: Any) -> tuple[int, int | None, str | None]:
        """Draw what TDH.VP.ENTER does this time: (refusal status or TDX_SUCCESS, exit status
        of an entered-and-failed TD or None, kind or None).  Every enabled stream draws once
        per SEAMCALL, so streams stay aligned whatever fires first."""
        kind = None
        for p, name, rng in self.module:
            if rng.random() < p and kind is None:
                kind = name
        if kind is None:
            return arch.TDX_SUCCESS, None, None
        details = self.details(kind)
        return module_outcome(kind, self.detail_rng.choice(details) if details else 0)

    def details(self, kind: str) -> Sequence[int]:
        """The values a module outcome's detail is drawn from: the OPERAND_BUSY operand id,
        the SEAMCALL error of sw_error, the low bits of error_exit; empty for the others."""
        if kind == "operand_busy":
            return self.busy_ids
        if kind == "sw_error":
            return SW_ERRORS
        if kind == "error_exit":
            return self.low_bits
        return ()


def module_outcome(kind: str, detail: int) -> tuple[int, int | None, str]:
    """What TDH.VP.ENTER returns for the module outcome `kind` (a probability knob of
    `FAULT_KNOBS` other than mmu_reload_fail) with its `detail` (`Faults.details`):
    (refusal status or TDX_SUCCESS, exit status of an entered-and-failed TD or None, kind)."""
    if kind == "operand_busy":
        if detail in (arch.TDX_OPERAND_ID_SEPT, arch.TDX_OPERAND_ID_TD_EPOCH):
            # after the module associated the vCPU
            return arch.TDX_OPERAND_BUSY | detail, None, "operand_busy_late"
        return arch.TDX_OPERAND_BUSY | detail, None, kind
    if kind == "tsc_rollback":
        return arch.TDX_TSC_ROLLBACK, None, kind
    if kind == "inconsistent_msr":
        return arch.TDX_INCONSISTENT_MSR, None, kind
    if kind == "vcpu_associated":
        return arch.TDX_VCPU_ASSOCIATED, None, kind
    if kind == "sw_error":
        return detail, None, kind
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
        return arch.TDX_SUCCESS, arch.TDX_TD_EXIT_BEFORE_L2_ENTRY | detail, kind
    if kind == "genuine_ept_misconfig":
        return arch.TDX_SUCCESS, arch.TDX_SUCCESS | arch.EXIT_REASON_EPT_MISCONFIG, kind
    raise ValueError(f"tdsim bug: {kind!r} is not a TDH.VP.ENTER outcome")
