"""Scripted guests: a vCPU whose workload is a program of exact steps (the step forms and
their compiler are `tdsim.program_steps`).

`ScriptedGuest` runs the program: between two calls it adds up the compute steps, arms the
TDX-module outcomes of ``vp_enter`` steps, and hands the next call's registers to the TDX
module at the TD exit.  When the program ends the guest parks (``cli; hlt``: TDVMCALL HLT
with R12 = 1, not recorded).

Every call is recorded (up to ``record_calls`` per vCPU): when it exited, the registers KVM
saw (``regs_in``), each exit to userspace KVM made for it (``kvm_run`` as the VMM left it,
and under ``before_vmm`` the union member as KVM filled it), the registers the guest got
back (``regs_out``: R10..R15, a register the bitmap does not expose as the guest had it),
which of them KVM wrote (``regs_written``: "not written" differs from "written as 0"), and
``kvm``: ``in_kernel``, ``userspace`` or ``kvm_run_error`` (KVM_RUN failed with ``kvm_run``;
the call does not return).  A ``vp_enter`` outcome is recorded the same way when it fires:
``vp_enter_ret``, the output registers, the exit reason KVM derived, what
``tdx_handle_exit`` returned (``handle_exit``) and the exit to userspace with its
``kvm_run`` fields (``internal``, ``fail_entry``, ``ex``, ``memory_fault``...).

A bitmap exposing RAX, RCX or RSP makes the TDX module fail the TDCALL itself (RAX =
TDX_OPERAND_INVALID | RCX, no TD exit, as the GHCI specifies for an invalid bitmap; the
operand id is tdsim's choice); the call is recorded with that RAX.
"""

from __future__ import annotations

from typing import Any

from . import arch
from .kvm_x86 import GPRS, KvmRegs
from .program_steps import (
    ARG_REGS,
    DEFAULT_EXPOSE_MASK,
    GPR_BIT,
    LEAF_ALIASES,
    MASK_REJECTED,
    TDCALL_REJECTED_RAX,
    Call,
    Loop,
    ProgramError,
    Step,
    VpEnter,
    compile_program,
    load_program_file,
)
from .tdvmcall import BY_NUMBER
from .tdx_module import SCRIPTED, VpEnterOutcome

__all__ = ["LEAF_ALIASES", "ProgramError", "ScriptedGuest", "TrackedRegs", "compile_program",
           "load_program_file", "scripted_vp_enter_outcome", "scripted_vp_enter_regs"]

_OUT_REGS = ("r10", "r11", "r12", "r13", "r14", "r15")
_REG_BIT = {name: 1 << i for i, name in enumerate(GPRS)}
_MODULE_REGS = ("rcx", *ARG_REGS)


class TrackedRegs(KvmRegs):
    """vcpu->arch.regs[] (and, in the in-place layout, vp_enter_args) of a scripted vCPU:
    the GPRs, plus a mask of those written since it was last cleared, so a call record can
    tell "KVM did not write R11" from "KVM wrote 0"."""

    __slots__ = ("written",)
    written: int

    def __init__(self) -> None:
        object.__setattr__(self, "written", 0)
        super().__init__()

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        bit = _REG_BIT.get(name)
        if bit is not None:
            object.__setattr__(self, "written", self.written | bit)


class ScriptedGuest:
    """The guest side of a vCPU running a program (same interface as `GuestVcpu`).

    ``next_period`` is called when KVM has completed the previous call (its results are in
    the vCPU's register view, ``vcpu.gprs``): it records them and runs the program up to
    the next call."""

    def __init__(self, program: list[Step], c_tdvmcall: int, record_max: int) -> None:
        # [steps, pc, iterations left (0 = inf)]
        self.stack: list[list[Any]] = [[program, 0, 1]]
        self.c_tdvmcall = c_tdvmcall
        self.record_max = record_max
        self.calls: list[dict[str, Any]] = []
        self.record: dict[str, Any] | None = None
        self.call: Call | None = None
        self.vcpu: Any = None
        self.remaining_ns = 0
        self.irq_debt_ns = 0
        self.kind = ""
        self.tdvmcall_key = ""
        self.parked = False
        self.awaiting = False  # a TDVMCALL issued and not yet completed (as GuestVcpu's)
        self.exits_this_call = 0
        # TDX-module outcomes: TDH.VP.ENTERs seen so far, and the armed (entry, step) pairs
        self.vp_enter_count = 0
        self.vp_enter_targets: list[tuple[int, VpEnter]] = []
        self.outcome: VpEnter | None = None         # the outcome of the entry in progress
        self.outcome_record: dict[str, Any] | None = None
        self.next_period()

    def bind(self, vcpu: Any) -> None:
        """Attach to the vCPU; its register view becomes a `TrackedRegs`."""
        self.vcpu = vcpu
        old = vcpu.gprs
        regs = TrackedRegs()
        for r in GPRS:
            object.__setattr__(regs, r, getattr(old, r))
        if vcpu.vp_enter_args is old:
            vcpu.vp_enter_args = regs
        vcpu.gprs = regs

    def _now(self) -> int:
        return int(self.vcpu.env.now) if self.vcpu is not None else 0

    def _next_step(self) -> Call | VpEnter | int | None:
        stack = self.stack
        while stack:
            frame = stack[-1]
            steps, pc, left = frame
            if pc < len(steps):
                frame[1] = pc + 1
                step = steps[pc]
                if isinstance(step, Loop):
                    if step.count != 0 or step.body:
                        stack.append([step.body, 0, step.count])
                    continue
                return step  # type: ignore[no-any-return]
            if left == 0 or left > 1:  # another iteration
                frame[1] = 0
                if left > 1:
                    frame[2] = left - 1
                if steps:
                    continue
            stack.pop()
        return None

    def next_period(self) -> None:
        """The previous call returned: record it; run to the next call."""
        self.awaiting = False
        now = self._now()
        if self.record is not None:
            self._finish(self.record, now)
            self.record = None
        compute = 0
        while True:
            step = self._next_step()
            if step is None:
                self.parked = True
                self.call = None
                self.kind = "hlt"
                self.tdvmcall_key = "tdvmcall.hlt"
                break
            if isinstance(step, VpEnter):
                self._arm(step)
                continue
            if not isinstance(step, Call):
                compute += step
                continue
            if step.mask & MASK_REJECTED:
                # The module rejects the TDCALL: no TD exit, RAX carries the error.
                compute += self.c_tdvmcall
                if len(self.calls) < self.record_max:
                    rec = self._open(step, now + compute)
                    rec["rax"] = TDCALL_REJECTED_RAX
                    rec["kvm"] = "none (TDCALL failed in the TDX module)"
                    rec["t_done_ns"] = now + compute
                    rec["regs_out"] = {r: step.regs[r] for r in _OUT_REGS}
                continue
            self.call = step
            self.kind = step.kind
            self.tdvmcall_key = step.key
            break
        self.remaining_ns = compute + self.c_tdvmcall + self.irq_debt_ns
        self.irq_debt_ns = 0

    def tdvmcall_regs(self, args: Any) -> None:
        """TDG.VP.VMCALL as the TDX module hands it to KVM: RCX = the bitmap, exposed GPRs
        with the guest's values, the others 0."""
        self.awaiting = True
        self.exits_this_call = 0
        call = self.call
        if call is None:  # parked: cli; hlt
            args.rcx = DEFAULT_EXPOSE_MASK
            for r in ARG_REGS:
                setattr(args, r, 0)
            args.r11, args.r12 = arch.TDVMCALL_HLT, 1
            return
        mask = call.mask
        args.rcx = mask
        regs = call.regs
        for r in ARG_REGS:
            setattr(args, r, regs[r] if mask & GPR_BIT[r] else 0)
        if len(self.calls) < self.record_max:
            rec = self._open(call, self._now())
            rec["regs_in"] = {"rcx": mask, **{r: getattr(args, r) for r in ARG_REGS
                                              if mask & GPR_BIT[r]}}
            rec["exits"] = []
            rec["kvm"] = "pending"  # until the call returns (never, if the VM stopped)
            self.record = rec

    # --- what KVM and the VMM report about the call in progress ---------------------------
    def begin_exit(self) -> None:
        """KVM starts handling a TD exit: from now on, register writes are KVM's."""
        self.vcpu.gprs.written = 0

    def vmm_answer(self) -> dict[str, Any] | None:
        """The VMM's answer the current call's step gives for its next exit to userspace
        (list values: one per exit, the last repeating), or None."""
        call = self.call
        n = self.exits_this_call
        self.exits_this_call = n + 1
        if call is None or call.vmm is None:
            return None
        return {k: (v[min(n, len(v) - 1)] if isinstance(v, list) else v)
                for k, v in call.vmm.items()}

    def record_exit(self, exit_fields: dict[str, Any]) -> None:
        """KVM exited to userspace for the call in progress (fields + the VMM's answer)."""
        if self.record is not None:
            self.record["exits"].append(exit_fields)
            self.record["kvm"] = "userspace"

    def record_kvm_run_error(self, r: int) -> None:
        """KVM_RUN failed with `r` while completing the call (it never returns)."""
        if self.record is not None:
            self.record["kvm"] = "kvm_run_error"
            self.record["kvm_run"] = r

    def _open(self, call: Call, t: int) -> dict[str, Any]:
        regs = call.regs
        rec: dict[str, Any] = {
            "t_ns": t, "step": call.index, "name": call.name,
            "leaf": (f"KVM_HC({regs['r10']})" if regs["r10"]
                     else BY_NUMBER[regs["r11"]].name if regs["r11"] in BY_NUMBER
                     else f"{regs['r11']:#x}")}
        self.calls.append(rec)
        return rec

    def _finish(self, rec: dict[str, Any], now: int) -> None:
        call = self.call
        assert call is not None
        mask = call.mask
        view = self.vcpu.gprs
        written = view.written
        out = {}
        for r in _OUT_REGS:
            out[r] = getattr(view, r) if mask & GPR_BIT[r] else call.regs[r]
        rec["rax"] = 0
        rec["kvm"] = "userspace" if rec["exits"] else "in_kernel"
        rec["regs_out"] = out
        rec["regs_written"] = [r for r in _OUT_REGS if mask & GPR_BIT[r] and written & _REG_BIT[r]]
        if call.regs["r10"] == 0:
            rec["status"] = arch.TDVMCALL_STATUS_NAMES.get(out["r10"], f"{out['r10']:#x}")
        rec["t_done_ns"] = now

    # --- scripted TDX-module outcomes -------------------------------------------------------
    def _arm(self, step: VpEnter) -> None:
        """A vp_enter step: its outcome is for the nth TDH.VP.ENTER from now (the entry after
        it if another outcome already has that one)."""
        target = self.vp_enter_count + step.nth
        taken = {t for t, _s in self.vp_enter_targets}
        while target in taken:
            target += 1
        self.vp_enter_targets.append((target, step))
        self.vp_enter_targets.sort(key=lambda ts: ts[0])

    def take_vp_enter(self) -> VpEnter | None:
        """One more TDH.VP.ENTER of this vCPU: the outcome armed for it, if any (opens its
        record)."""
        self.vp_enter_count += 1
        targets = self.vp_enter_targets
        if not targets or targets[0][0] != self.vp_enter_count:
            self.outcome = None
            return None
        step = targets.pop(0)[1]
        self.outcome = step
        self.outcome_record = None
        if len(self.calls) < self.record_max:
            rec: dict[str, Any] = {
                "t_ns": self._now(), "step": step.index, "name": step.name, "op": "vp_enter",
                "leaf": "TDH.VP.ENTER",
                "vp_enter_ret": step.status, "entered": step.entered,
                "regs_in": {r: v for r, v in step.regs.items() if v}, "exits": [],
                "kvm": "pending"}
            self.calls.append(rec)
            self.outcome_record = rec
        return step

    def vp_enter_regs(self, args: Any) -> None:
        """The module's output registers of the scripted outcome (after it zeroed them)."""
        step = self.outcome
        if step is not None:
            for r, v in step.regs.items():
                setattr(args, r, v)

    def finish_vp_enter(self, exit_reason: str, r: int, run: Any) -> None:
        """KVM's tdx_handle_exit returned `r` for the scripted outcome: record what it did
        (for r <= 0, the kvm_run exit it prepared, unless KVM_RUN simply failed)."""
        rec = self.outcome_record
        self.outcome = None
        self.outcome_record = None
        if rec is None:
            return
        rec["exit_reason"] = exit_reason
        rec["handle_exit"] = r
        if r > 0:
            rec["kvm"] = "in_kernel"
        elif r == 0 or (r == -arch.EFAULT and run.exit_reason == arch.KVM_EXIT_MEMORY_FAULT):
            snap = run.snapshot()
            snap["t_ns"] = self._now()
            rec["exits"].append(snap)
            rec["kvm"] = "userspace"
            if r < 0:
                rec["kvm_run"] = r
        else:
            rec["kvm"] = "kvm_run_error"
            rec["kvm_run"] = r
        rec["t_done_ns"] = self._now()


def scripted_vp_enter_outcome(fallback: VpEnterOutcome | None) -> VpEnterOutcome:
    """The TDX module's vp_enter_outcome hook for a run with scripted guests: the outcome a
    ``vp_enter`` step armed for this TDH.VP.ENTER, if any, else `fallback`'s (fault
    injection).  `fallback` draws at every SEAMCALL either way, so adding a step never
    shifts a ``[faults]`` stream."""
    def outcome(vcpu: Any) -> tuple[int, int | None, str | None]:
        drawn = fallback(vcpu) if fallback is not None else (arch.TDX_SUCCESS, None, None)
        guest = vcpu.guest
        step = guest.take_vp_enter() if isinstance(guest, ScriptedGuest) else None
        if step is None:
            return drawn
        if step.entered:
            return arch.TDX_SUCCESS, step.status, SCRIPTED
        return step.status, None, SCRIPTED
    return outcome


def scripted_vp_enter_regs(vcpu: Any, args: Any) -> None:
    """The TDX module's vp_enter_regs hook: the scripted outcome's output registers."""
    vcpu.guest.vp_enter_regs(args)
