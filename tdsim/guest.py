"""Guest vCPU workloads: what a TD vCPU does between exits.

A statistical workload alternates guest compute periods (fixed or exponential) with a
TDVMCALL drawn from the scenario's mix.  The guest puts the GHCI registers of its call in
place (R10 = 0 for a GHCI call or the KVM hypercall number, R11 = sub-function, R12.. the
arguments; docs/tdvmcall.md), exposing the GPRs Linux guests expose
(TDVMCALL_EXPOSE_REGS_MASK); the TDX module hands them to KVM in ``vp_enter_args``.

Each vCPU draws from its own named stream, so the guest's behaviour is the same whatever the
host-state strategy (common random numbers).  The draws of a stream no one else reads are
made in blocks (`BATCH` periods at a time, in the same order), which is cheaper per period.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate
from math import log
from typing import Any

from . import arch

# Kinds of TDVMCALL a statistical workload can issue (the keys of [vm.workload] mix).  The first
# four are handled inside KVM; io, mmio and mapgpa go to the userspace VMM; hlt blocks the vCPU.
TDVMCALL_KINDS = ("cpuid", "rdmsr", "wrmsr", "hypercall", "io", "mmio", "mapgpa", "hlt")

SHARED_BIT = 1 << 47  # GPA shared bit of a TD with a 48-bit GPAW
KVM_HC_VAPIC_POLL_IRQ = 1

# kind -> (R10, R11, R12, R13, R14, R15): the registers of one representative call.
TDVMCALL_REGS = {
    "cpuid": (0, arch.TDVMCALL_CPUID, 0x1, 0, 0, 0),
    "rdmsr": (0, arch.TDVMCALL_RDMSR, 0x1A0, 0, 0, 0),           # IA32_MISC_ENABLE
    "wrmsr": (0, arch.TDVMCALL_WRMSR, 0x6E0, 0x1234, 0, 0),     # IA32_TSC_DEADLINE
    "hypercall": (KVM_HC_VAPIC_POLL_IRQ, 0, 0, 0, 0, 0),
    "io": (0, arch.TDVMCALL_IO, 1, 1, 0x3F8, 0x41),             # outb 0x41 -> COM1
    "mmio": (0, arch.TDVMCALL_VE_REQUEST_MMIO, 4, 1, SHARED_BIT | 0xFEB00000, 0x1),
    "mapgpa": (0, arch.TDVMCALL_MAP_GPA, SHARED_BIT | 0x100000000, 0x200000, 0, 0),
    "hlt": (0, arch.TDVMCALL_HLT, 0, 0, 0, 0),                  # interrupts enabled
}

TDVMCALL_KEYS = {k: f"tdvmcall.{k}" for k in TDVMCALL_KINDS}
BATCH = 64  # compute periods drawn at a time
_Call = tuple[str, str, tuple[int, ...]]  # (kind, its counter, its registers)
# A schedule's supply (or a recording's tap) of a guest's periods: given the guest, the
# function that returns its next (compute ns, call) each time and never runs out.
PeriodSource = Callable[["GuestVcpu"], Callable[[], tuple[int, _Call]]]


def tdvmcall_call(kind: str) -> _Call:
    """The (kind, counter, registers) of a statistical guest's TDVMCALL `kind`."""
    return kind, TDVMCALL_KEYS[kind], TDVMCALL_REGS[kind]


class GuestVcpu:
    """The guest side of one TD vCPU: remaining compute before its next TDVMCALL."""

    __slots__ = ("rng", "mean_ns", "exp", "kinds", "cum", "total", "c_tdvmcall",
                 "remaining_ns", "kind", "tdvmcall_key", "irq_debt_ns", "_regs", "awaiting",
                 "tsc_aux_acc", "_random", "_lambd", "_calls", "_single", "_next")

    def __init__(self, rng: random.Random, compute_ns: int, exp: bool,
                 mix: Any, c_tdvmcall: int, periods: PeriodSource | None = None) -> None:
        self.rng = rng
        self.mean_ns = compute_ns
        self.exp = exp
        self.kinds = [k for k in TDVMCALL_KINDS if mix.get(k, 0) > 0]
        self.cum = list(accumulate(mix[k] for k in self.kinds))
        self.total = self.cum[-1]
        self.c_tdvmcall = c_tdvmcall
        self.irq_debt_ns = 0
        self.remaining_ns = 0
        self.kind = ""
        self.tdvmcall_key = ""
        self._regs: tuple[int, ...] = TDVMCALL_REGS["cpuid"]
        self.awaiting = False  # a TDVMCALL issued and not yet completed
        self.tsc_aux_acc = 0   # VMX guests: TSC_AUX reads owed (x 1e9)
        self._random = rng.random
        self._lambd = 1.0 / compute_ns if exp else 0.0
        # per kind: (kind, its counter, its registers); the only one if the mix has one
        self._calls: list[_Call] = [(k, TDVMCALL_KEYS[k], TDVMCALL_REGS[k])
                                    for k in self.kinds]
        self._single = self._calls[0] if len(self._calls) == 1 else None
        # where the periods come from: blocks drawn from the stream (`_draw_batch`, taken when
        # the iterator runs out), or a schedule's choice point (`tdsim.choices`), given the
        # guest before its first period
        self._next: Callable[[], tuple[int, _Call]] = (
            iter(()).__next__ if periods is None else periods(self))
        self.next_period()

    def _draw_batch(self) -> list[tuple[int, _Call]]:
        """The next `BATCH` periods' (compute ns, call), drawn in the stream's order: for
        each period its compute time (random.expovariate(1 / mean), computed in place, the
        same value), then its call (by the mix's cumulative weights)."""
        random = self._random
        lambd = self._lambd
        calls = self._calls
        single = self._single
        cum = self.cum
        total = self.total
        mean = self.mean_ns
        if self.exp:
            if single is not None:
                return [(int(-log(1.0 - random()) / lambd), single) for _ in range(BATCH)]
            return [(int(-log(1.0 - random()) / lambd),
                     calls[bisect_right(cum, random() * total)]) for _ in range(BATCH)]
        if single is not None:
            return [(mean, single)] * BATCH
        return [(mean, calls[bisect_right(cum, random() * total)]) for _ in range(BATCH)]

    def next_period(self) -> None:
        """Start a compute period and choose the TDVMCALL that ends it (completes the previous
        TDVMCALL, if any)."""
        self.awaiting = False
        compute: int
        call: _Call
        try:
            compute, call = self._next()
        except StopIteration:
            self._next = iter(self._draw_batch()).__next__
            compute, call = self._next()
        self.kind, self.tdvmcall_key, self._regs = call
        self.remaining_ns = compute + self.c_tdvmcall + self.irq_debt_ns
        self.irq_debt_ns = 0

    def tdvmcall_regs(self, args: Any) -> None:
        """TDG.VP.VMCALL: the registers the module passes to KVM in vp_enter_args."""
        self.awaiting = True
        args.rcx = arch.TDVMCALL_EXPOSE_REGS_MASK
        args.r10, args.r11, args.r12, args.r13, args.r14, args.r15 = self._regs
