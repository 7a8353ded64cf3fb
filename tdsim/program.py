"""Scripted guests: a vCPU whose workload is a program of exact steps.

A program (``[vm.workload] program = [...]`` or ``program_file = "file.toml"`` holding a
``program`` array) is a list of steps, each a table with an ``op``:

* ``{op = "compute", us = 5}`` (or ``ns = 5000``): guest work before the next call.
* ``{op = "tdvmcall", r10 = 0, r11 = "io", r12 = 1, ..., rcx = 0xFFCC, name = "outb"}``: a
  TDG.VP.VMCALL with explicit registers.  ``r11`` may be a number or a sub-function name
  (`LEAF_ALIASES`); ``rcx`` is the register-exposure bitmap (default Linux's
  TDVMCALL_EXPOSE_REGS_MASK 0xFFCC); ``rdx rbx rsi rdi r8 r9`` may be set too.  Registers
  the bitmap does not expose reach KVM as 0 and come back unchanged.  The sub-function names
are the aliases declared in `tdsim.tdvmcall.LEAVES`.
* ``{op = "hlt", irqs_blocked = false}``: TDVMCALL Instruction.HLT (R12 = the flag).
* ``{op = "cpuid", leaf = 1, subleaf = 0}``, ``{op = "rdmsr", index = 0x1a0}``,
  ``{op = "wrmsr", index = 0x6e0, value = 1}``: the TDVMCALLs a #VE handler issues.
* ``{op = "loop", count = 3, steps = [...]}``: repeat (``count = 0``: forever; its body must
  then make a call, so that time passes).

Every vCPU of the VM runs the program; a step with ``vcpus = [0, 2]`` runs only on those
vCPUs (a call's ``step`` number is the same on every vCPU).

* ``{op = "ipi", vector = 0xfd, dest = 1}`` (or ``shorthand = "self" | "all" | "others"``):
  the x2APIC ICR write a guest sends an IPI with (TDVMCALL WRMSR 0x830); KVM posts the vector
  to the destination vCPUs.

When the program ends the guest parks (``cli; hlt``: TDVMCALL HLT with R12 = 1, not
recorded).  Every call is recorded (up to ``record_calls`` per vCPU): when it exited, the
registers KVM saw, each exit to userspace KVM made for it (with the VMM's answer), and the
registers the guest got back.  A bitmap exposing RAX, RCX or RSP makes the TDX module fail
the TDCALL itself (RAX = TDX_OPERAND_INVALID | RCX, no TD exit, as the GHCI specifies for an
invalid bitmap; the operand id is tdsim's choice); the call is recorded with that RAX.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from . import arch
from .tdvmcall import BY_ALIAS, BY_NUMBER

DEFAULT_EXPOSE_MASK = arch.TDVMCALL_EXPOSE_REGS_MASK
# GPR index in the RCX bitmap -> name (RAX 0 ... R15 15)
GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
GPR_BIT = {name: 1 << i for i, name in enumerate(GPR_NAMES)}
# The 13 registers TDH.VP.ENTER carries (struct tdx_module_args order), RCX excluded.
ARG_REGS = ("rdx", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rbx", "rdi", "rsi")
# RAX, RCX, RSP cannot be exposed: the TDCALL fails.
MASK_REJECTED = GPR_BIT["rax"] | GPR_BIT["rcx"] | GPR_BIT["rsp"]
TDCALL_REJECTED_RAX = arch.TDX_OPERAND_INVALID | arch.TDX_OPERAND_ID_RCX

LEAF_ALIASES = {alias: leaf.number for alias, leaf in BY_ALIAS.items()}
# metric kind (tdvmcall.<kind>) per R11 for GHCI calls
_KIND = {leaf.number: alias for alias, leaf in BY_ALIAS.items()}

_OPS = {
    "compute": {"us", "ns"},
    "tdvmcall": {"name", "rcx", *ARG_REGS},
    "hlt": {"name", "irqs_blocked"},
    "cpuid": {"name", "leaf", "subleaf"},
    "rdmsr": {"name", "index"},
    "wrmsr": {"name", "index", "value"},
    "ipi": {"name", "vector", "dest", "shorthand"},
    "loop": {"count", "steps"},
}
U64 = (1 << 64) - 1
X2APIC_ICR = 0x830
# x2APIC ICR destination shorthand (bits 19:18)
_SHORTHAND = {"none": 0, "self": 1, "all": 2, "others": 3}


class ProgramError(Exception):
    """A malformed program; `path` is relative to the program array."""

    def __init__(self, path: tuple, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class Call:
    """One compiled TDVMCALL step: its label, RCX bitmap and the 12 other registers."""

    __slots__ = ("index", "name", "mask", "regs", "kind", "key")

    def __init__(self, index: int, name: str, mask: int, regs: dict[str, int]) -> None:
        self.index = index
        self.name = name
        self.mask = mask
        self.regs = regs
        r10, r11 = regs["r10"], regs["r11"]
        self.kind = "hypercall" if r10 else _KIND.get(r11, "other")
        self.key = f"tdvmcall.{self.kind}"


class Loop:
    __slots__ = ("count", "body")

    def __init__(self, count: int, body: list) -> None:
        self.count = count
        self.body = body


def _u64(value: Any, path: tuple) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64:
        raise ProgramError(path, f"expected a 64-bit unsigned integer, got {value!r}")
    return value


def compile_program(steps: Any, path: tuple = (), counter: list | None = None,
                    vcpu: int | None = None) -> list:
    """Check `steps` and turn them into Call / Loop / compute-ns items; raises ProgramError.

    With `vcpu`, steps whose ``vcpus`` list does not name it are left out (all are checked)."""
    counter = counter if counter is not None else [0]
    if not isinstance(steps, list):
        raise ProgramError(path, "expected an array of steps")
    out: list = []
    for j, step in enumerate(steps):
        p = path + (j,)
        if not isinstance(step, dict):
            raise ProgramError(p, "a step is a table with an `op`")
        op = step.get("op")
        if op not in _OPS:
            raise ProgramError(p + ("op",), f"unknown op {op!r} (one of {', '.join(_OPS)})")
        for key in step:
            if key not in ("op", "vcpus") and key not in _OPS[op]:
                raise ProgramError(p + (key,), f"unknown key {key!r} for op {op!r}")
        only = step.get("vcpus")
        if only is not None and (not isinstance(only, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in only)):
            raise ProgramError(p + ("vcpus",), "expected an array of vCPU indices")
        skip = vcpu is not None and only is not None and vcpu not in only
        if op == "compute":
            if ("us" in step) == ("ns" in step):
                raise ProgramError(p, "give exactly one of `us` or `ns`")
            value = step.get("us", step.get("ns"))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ProgramError(p, "compute time must be a number >= 0")
            if not skip:
                out.append(round(value * 1000) if "us" in step else int(value))
            continue
        if op == "loop":
            count = step.get("count", 1)
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ProgramError(p + ("count",), "expected an integer >= 0 (0 = forever)")
            body = compile_program(step.get("steps", []), p + ("steps",), counter,
                                   None if skip else vcpu)
            if count == 0 and vcpu is None and not _makes_call(body):
                raise ProgramError(p + ("steps",), "a loop forever needs a call in its body")
            if not skip and (count != 0 or _makes_call(body)):
                out.append(Loop(count, body))
            continue
        regs = dict.fromkeys(ARG_REGS, 0)
        mask = DEFAULT_EXPOSE_MASK
        if op == "tdvmcall":
            for key in ARG_REGS:
                if key in step:
                    value = step[key]
                    if key == "r11" and isinstance(value, str):
                        if value not in LEAF_ALIASES:
                            raise ProgramError(p + (key,), f"unknown sub-function {value!r} "
                                               f"(one of {', '.join(LEAF_ALIASES)})")
                        value = LEAF_ALIASES[value]
                    regs[key] = _u64(value, p + (key,))
            if "rcx" in step:
                mask = _u64(step["rcx"], p + ("rcx",))
        elif op == "hlt":
            flag = step.get("irqs_blocked", False)
            if not isinstance(flag, bool):
                raise ProgramError(p + ("irqs_blocked",), "expected a boolean")
            regs["r11"], regs["r12"] = arch.TDVMCALL_HLT, int(flag)
        elif op == "cpuid":
            regs["r11"] = arch.TDVMCALL_CPUID
            regs["r12"] = _u64(step.get("leaf", 0), p + ("leaf",))
            regs["r13"] = _u64(step.get("subleaf", 0), p + ("subleaf",))
        elif op == "rdmsr":
            regs["r11"], regs["r12"] = arch.TDVMCALL_RDMSR, _u64(step.get("index", 0),
                                                                 p + ("index",))
        elif op == "ipi":
            vector = _u64(step.get("vector", 0), p + ("vector",))
            shorthand = step.get("shorthand", "none")
            if shorthand not in _SHORTHAND:
                raise ProgramError(p + ("shorthand",), f"one of {', '.join(_SHORTHAND)}")
            if vector > 0xFF:
                raise ProgramError(p + ("vector",), "a vector is 0..255")
            dest = _u64(step.get("dest", 0), p + ("dest",)) & 0xFFFFFFFF
            regs["r11"], regs["r12"] = arch.TDVMCALL_WRMSR, X2APIC_ICR
            regs["r13"] = (dest << 32) | (_SHORTHAND[shorthand] << 18) | vector
        elif op == "wrmsr":
            regs["r11"] = arch.TDVMCALL_WRMSR
            regs["r12"] = _u64(step.get("index", 0), p + ("index",))
            regs["r13"] = _u64(step.get("value", 0), p + ("value",))
        name = step.get("name", "")
        if not isinstance(name, str):
            raise ProgramError(p + ("name",), "expected a string")
        if not skip:
            out.append(Call(counter[0], name or op, mask, regs))
        counter[0] += 1
    return out


def _makes_call(body: list) -> bool:
    return any(isinstance(s, Call) or (isinstance(s, Loop) and _makes_call(s.body))
               for s in body)


def load_program_file(path: Path) -> list:
    """The ``program`` array of a program file (raises OSError / ValueError)."""
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    if list(doc) != ["program"] or not isinstance(doc["program"], list):
        raise ValueError("a program file holds one key, `program` (an array of steps)")
    return doc["program"]


class ScriptedGuest:
    """The guest side of a vCPU running a program (same interface as `GuestVcpu`).

    ``next_period`` is called when KVM has completed the previous call (its results are in
    the vCPU's register view, ``vcpu.gprs``): it records them and runs the program up to
    the next call."""

    def __init__(self, program: list, c_tdvmcall: int, record_max: int) -> None:
        self.stack: list[list] = [[program, 0, 1]]  # [steps, pc, iterations left (0 = inf)]
        self.c_tdvmcall = c_tdvmcall
        self.record_max = record_max
        self.calls: list[dict] = []
        self.record: dict | None = None
        self.call: Call | None = None
        self.vcpu = None
        self.remaining_ns = 0
        self.irq_debt_ns = 0
        self.kind = ""
        self.tdvmcall_key = ""
        self.parked = False
        self.awaiting = False  # a TDVMCALL issued and not yet completed (as GuestVcpu's)
        self.next_period()

    def bind(self, vcpu) -> None:
        self.vcpu = vcpu

    def _now(self) -> int:
        return self.vcpu.env.now if self.vcpu is not None else 0

    def _next_step(self):
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
                return step
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
                    rec["regs_out"] = {r: step.regs[r] for r in ("r10", "r11", "r12", "r13",
                                                                "r14", "r15")}
                continue
            self.call = step
            self.kind = step.kind
            self.tdvmcall_key = step.key
            break
        self.remaining_ns = compute + self.c_tdvmcall + self.irq_debt_ns
        self.irq_debt_ns = 0

    def tdvmcall_regs(self, args) -> None:
        """TDG.VP.VMCALL as the TDX module hands it to KVM: RCX = the bitmap, exposed GPRs
        with the guest's values, the others 0."""
        self.awaiting = True
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

    def record_exit(self, exit_fields: dict) -> None:
        """KVM exited to userspace for the call in progress (fields + the VMM's answer)."""
        if self.record is not None:
            self.record["exits"].append(exit_fields)
            self.record["kvm"] = "userspace"

    def _open(self, call: Call, t: int) -> dict:
        regs = call.regs
        rec = {"t_ns": t, "step": call.index, "name": call.name,
               "leaf": (f"KVM_HC({regs['r10']})" if regs["r10"]
                        else BY_NUMBER[regs["r11"]].name if regs["r11"] in BY_NUMBER
                        else f"{regs['r11']:#x}")}
        self.calls.append(rec)
        return rec

    def _finish(self, rec: dict, now: int) -> None:
        call = self.call
        mask = call.mask
        view = self.vcpu.gprs
        out = {}
        for r in ("r10", "r11", "r12", "r13", "r14", "r15"):
            out[r] = getattr(view, r) if mask & GPR_BIT[r] else call.regs[r]
        rec["rax"] = 0
        rec["kvm"] = "userspace" if rec["exits"] else "in_kernel"
        rec["regs_out"] = out
        if call.regs["r10"] == 0:
            rec["status"] = arch.TDVMCALL_STATUS_NAMES.get(out["r10"], f"{out['r10']:#x}")
        rec["t_done_ns"] = now
