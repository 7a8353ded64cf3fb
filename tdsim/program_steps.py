"""Scripted-guest programs: the step forms and their compiler (`tdsim.program` runs them).

A program (``[vm.workload] program = [...]`` or ``program_file = "file.toml"`` holding a
``program`` array) is a list of steps, each a table with an ``op``:

* ``{op = "compute", us = 5}`` (or ``ns = 5000``): guest work before the next call.
* ``{op = "tdvmcall", r10 = 0, r11 = "io", r12 = 1, ..., rcx = 0xFFCC, name = "outb"}``: a
  TDG.VP.VMCALL with explicit registers.  ``r11`` may be a number or a sub-function name
  (the aliases declared in `tdsim.tdvmcall.LEAVES`); ``rcx`` is the register-exposure
  bitmap (default Linux's TDVMCALL_EXPOSE_REGS_MASK 0xFFCC); ``rdx rbx rsi rdi r8 r9`` may
  be set too.  Registers the bitmap does not expose reach KVM as 0 and come back unchanged.
* ``{op = "hlt", irqs_blocked = false}``: TDVMCALL Instruction.HLT (R12 = the flag).
* ``{op = "cpuid", leaf = 1, subleaf = 0}``, ``{op = "rdmsr", index = 0x1a0}``,
  ``{op = "wrmsr", index = 0x6e0, value = 1}``: the TDVMCALLs a #VE handler issues.
* ``{op = "ipi", vector = 0xfd, dest = 1}`` (or ``shorthand = "self" | "all" | "others"``):
  the x2APIC ICR write a guest sends an IPI with (TDVMCALL WRMSR 0x830).
* ``{op = "loop", count = 3, steps = [...]}``: repeat (``count = 0``: forever; its body must
  then make a call, so that time passes).
* ``{op = "vp_enter", status = 0x8000020000000092, nth = 1, r9 = ..., entered = false}``: the
  TDX module's answer to a TDH.VP.ENTER of this vCPU -- the next one (``nth = 1``) or the
  nth from here -- is ``status`` (the 64-bit ``vp_enter_ret``) with the output registers given
  (``rcx rdx r8 r9 r10 .. r15 rbx rdi rsi``; the others 0), instead of running the guest.
  ``entered`` says whether the TD was entered first (guest state loaded: the exit leaves
  the module's values in the host MSRs); by default a status with the error bit (63)
  refused the entry and any other was entered.  Exact and deterministic: it draws nothing
  from the ``[faults]`` streams.

A call step (tdvmcall, hlt, cpuid, rdmsr, wrmsr, ipi) may carry the VMM's answer for this
call: ``vmm = { ret = 11 }`` (any ``hypercall.ret`` / ``tdx.ret``, "keep" to leave KVM's
value, or a list: one per exit of the call, the last repeating), ``data`` (an IO / MMIO /
RDMSR read), ``error`` (``msr.error``), ``regs = [r11, r12, r13, r14]`` (GetTdVmCallInfo
leaf 1), ``stop`` (a fatal-error report stops the VM), ``service_ns``.

Every vCPU of the VM runs the program; a step with ``vcpus = [0, 2]`` runs only on those
vCPUs (a step's number is the same on every vCPU).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from . import arch
from .tdvmcall import BY_ALIAS

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
_CALL_KEYS = {"name", "vmm"}
_OPS = {
    "compute": {"us", "ns"},
    "tdvmcall": {"rcx", *ARG_REGS, *_CALL_KEYS},
    "hlt": {"irqs_blocked", *_CALL_KEYS},
    "cpuid": {"leaf", "subleaf", *_CALL_KEYS},
    "rdmsr": {"index", *_CALL_KEYS},
    "wrmsr": {"index", "value", *_CALL_KEYS},
    "ipi": {"vector", "dest", "shorthand", *_CALL_KEYS},
    "loop": {"count", "steps"},
    "vp_enter": {"name", "status", "nth", "entered", "rcx", *ARG_REGS},
}
_VMM_KEYS = ("ret", "data", "error", "regs", "stop", "service_ns")
U64 = (1 << 64) - 1
X2APIC_ICR = 0x830
# x2APIC ICR destination shorthand (bits 19:18)
_SHORTHAND = {"none": 0, "self": 1, "all": 2, "others": 3}
Path_ = tuple[Any, ...]


class ProgramError(Exception):
    """A malformed program; `path` is relative to the program array."""

    def __init__(self, path: Path_, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class Call:
    """One compiled TDVMCALL step: its label, RCX bitmap, the 12 other registers and the
    VMM's answer for it, if the step gives one."""

    __slots__ = ("index", "name", "mask", "regs", "kind", "key", "vmm")

    def __init__(self, index: int, name: str, mask: int, regs: dict[str, int],
                 vmm: dict[str, Any] | None = None) -> None:
        self.index = index
        self.name = name
        self.mask = mask
        self.regs = regs
        r10, r11 = regs["r10"], regs["r11"]
        self.kind = "hypercall" if r10 else _KIND.get(r11, "other")
        self.key = f"tdvmcall.{self.kind}"
        self.vmm = vmm


class VpEnter:
    """One compiled vp_enter step: what the TDX module returns for a TDH.VP.ENTER."""

    __slots__ = ("index", "name", "status", "nth", "entered", "regs")

    def __init__(self, index: int, name: str, status: int, nth: int, entered: bool,
                 regs: dict[str, int]) -> None:
        self.index = index
        self.name = name
        self.status = status
        self.nth = nth
        self.entered = entered
        self.regs = regs


class Loop:
    __slots__ = ("count", "body")

    def __init__(self, count: int, body: list[Any]) -> None:
        self.count = count
        self.body = body


Step = Call | VpEnter | Loop | int


def _u64(value: Any, path: Path_) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64:
        raise ProgramError(path, f"expected a 64-bit unsigned integer, got {value!r}")
    return value


def _ret(value: Any, path: Path_) -> int | None:
    """One VMM ``ret``: "keep" (None), or a 64-bit value (negative: two's complement)."""
    if value == "keep":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not (
            -(1 << 63) <= value <= U64):
        raise ProgramError(path, f"expected a 64-bit value or \"keep\", got {value!r}")
    return value & U64


def _vmm_answer(value: Any, path: Path_) -> dict[str, Any]:
    """Check and compile a call's ``vmm`` table (list values: one per exit)."""
    if not isinstance(value, dict):
        raise ProgramError(path, "expected a table (keys: " + ", ".join(_VMM_KEYS) + ")")
    out: dict[str, Any] = {}
    for key, v in value.items():
        p = path + (key,)
        if key not in _VMM_KEYS:
            raise ProgramError(p, f"unknown key {key!r} (one of {', '.join(_VMM_KEYS)})")
        if key in ("ret", "data", "error"):
            check = _ret if key == "ret" else _u64
            if isinstance(v, list):
                if not v:
                    raise ProgramError(p, "expected a non-empty array")
                out[key] = [check(x, p + (j,)) for j, x in enumerate(v)]
            else:
                out[key] = check(int(v) if isinstance(v, bool) and key == "error" else v, p)
        elif key == "regs":
            if not isinstance(v, list) or len(v) != 4:
                raise ProgramError(p, "expected [r11, r12, r13, r14]")
            out[key] = tuple(_u64(x, p + (j,)) for j, x in enumerate(v))
        elif key == "stop":
            if not isinstance(v, bool):
                raise ProgramError(p, "expected a boolean")
            out[key] = v
        else:
            out[key] = _u64(v, p)
    return out


def compile_program(steps: Any, path: Path_ = (), counter: list[int] | None = None,
                    vcpu: int | None = None) -> list[Step]:
    """Check `steps` and turn them into Call / VpEnter / Loop / compute-ns items; raises
    ProgramError.  With `vcpu`, steps whose ``vcpus`` list does not name it are left out
    (all are checked)."""
    counter = counter if counter is not None else [0]
    if not isinstance(steps, list):
        raise ProgramError(path, "expected an array of steps")
    out: list[Step] = []
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
        name = step.get("name", "")
        if not isinstance(name, str):
            raise ProgramError(p + ("name",), "expected a string")
        if op == "vp_enter":
            compiled: Step = _vp_enter(step, p, counter[0], name)
        else:
            compiled = _call(op, step, p, counter[0], name)
        if not skip:
            out.append(compiled)
        counter[0] += 1
    return out


def _vp_enter(step: dict[str, Any], p: Path_, index: int, name: str) -> VpEnter:
    if "status" not in step:
        raise ProgramError(p, "a vp_enter step needs a `status` (the 64-bit vp_enter_ret)")
    status = _u64(step["status"], p + ("status",))
    nth = step.get("nth", 1)
    if isinstance(nth, bool) or not isinstance(nth, int) or nth < 1:
        raise ProgramError(p + ("nth",), "expected an integer >= 1 (1 = the next entry)")
    entered = step.get("entered", not status >> 63)
    if not isinstance(entered, bool):
        raise ProgramError(p + ("entered",), "expected a boolean")
    if status == arch.TDX_SUCCESS and not entered:
        raise ProgramError(p + ("entered",), "a refused entry needs a nonzero status")
    regs = {r: _u64(step.get(r, 0), p + (r,)) for r in ("rcx", *ARG_REGS)}
    return VpEnter(index, name or "vp_enter", status, nth, entered, regs)


def _call(op: str, step: dict[str, Any], p: Path_, index: int, name: str) -> Call:
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
    vmm = _vmm_answer(step["vmm"], p + ("vmm",)) if "vmm" in step else None
    return Call(index, name or op, mask, regs, vmm)


def _makes_call(body: list[Step]) -> bool:
    return any(isinstance(s, Call) or (isinstance(s, Loop) and _makes_call(s.body))
               for s in body)


def load_program_file(path: Path) -> list[Any]:
    """The ``program`` array of a program file (raises OSError / ValueError)."""
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    if list(doc) != ["program"] or not isinstance(doc["program"], list):
        raise ValueError("a program file holds one key, `program` (an array of steps)")
    return doc["program"]
