"""Guest vCPUs that also send IPIs, re-arm a one-shot timer, fault on private pages or halt
with interrupts disabled.  `irq_guest` picks this class only when a scenario uses one of those
features, so other guests keep the plain `tdsim.guest.GuestVcpu`."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from . import arch
from .guest import GuestVcpu, PeriodSource
from .rng import exp_ns

if TYPE_CHECKING:
    from .config import VmConfig
    from .scope import VcpuScope

# Linux guest vectors (arch/x86/include/asm/irq_vectors.h)
RESCHEDULE_VECTOR = 0xFD
CALL_FUNCTION_VECTOR = 0xFC
MSR_X2APIC_ICR = 0x830
MSR_IA32_TSC_DEADLINE = 0x6E0
# the vector and x2APIC ICR destination shorthand (bits 19:18: 0 = destination field, 3 = all
# excluding self) a guest IPI of each pattern uses
IPI_VECTOR = {"unicast": RESCHEDULE_VECTOR, "multicast": CALL_FUNCTION_VECTOR,
              "broadcast": CALL_FUNCTION_VECTOR, "shootdown": CALL_FUNCTION_VECTOR}
ICR_SHORTHAND = {"unicast": 0, "multicast": 0, "broadcast": 3 << 18, "shootdown": 0}


class IrqGuestVcpu(GuestVcpu):
    """A guest that also sends IPIs and/or re-arms a one-shot (TSC-deadline) timer.

    IPIs: a Poisson clock in guest compute time (its own stream) decides when a compute period
    ends with an ICR write (TDVMCALL WRMSR 0x830) instead of the mix call.  The mix stream is
    consumed exactly as without IPIs.

    One-shot timer: when the guest is about to take its timer vector (planned at the entry
    that delivers it), its handler re-arms the deadline first: the current period is set
    aside and the guest runs only to a WRMSR(IA32_TSC_DEADLINE) TDVMCALL
    (``tdvmcall.tsc_deadline``); the set-aside period resumes after it."""

    __slots__ = ("ipi_rng", "ipi_mean_ns", "ipi_left_ns", "icr", "oneshot", "saved",
                 "rearm_due", "rearm_planned", "fault_mean_ns", "fault_left_ns", "fault_gpa",
                 "hlt_irqs_off_p")

    def __init__(self, rng: random.Random, compute_ns: int, exp: bool, mix: Any,
                 c_tdvmcall: int, ipi_rng: random.Random, ipi_mean_ns: int, icr: int,
                 oneshot: bool = False, fault_mean_ns: int = 0,
                 hlt_irqs_off_p: float = 0.0, periods: PeriodSource | None = None) -> None:
        self.hlt_irqs_off_p = hlt_irqs_off_p
        self.ipi_rng = ipi_rng
        self.ipi_mean_ns = ipi_mean_ns
        self.icr = icr
        # private-page faults (tdsim.sept): a second Poisson clock in guest time, same stream
        self.fault_mean_ns = fault_mean_ns
        self.fault_left_ns = (exp_ns(ipi_rng, fault_mean_ns)
                              if fault_mean_ns else 1 << 62)
        self.fault_gpa = 0x100000000
        self.oneshot = oneshot
        self.saved: tuple[int, str, str, tuple[int, ...]] | None = None  # set-aside period
        self.rearm_due = False      # a timer was taken without a planned re-arm
        self.rearm_planned = False  # the re-arm call is planned for a pending timer vector
        self.ipi_left_ns = (exp_ns(ipi_rng, ipi_mean_ns)
                            if ipi_mean_ns else 1 << 62)
        super().__init__(rng, compute_ns, exp, mix, c_tdvmcall, periods)

    def ept_violation_regs(self, args: Any) -> None:
        """What the module returns for an EPT violation: RCX = exit qualification (a
        write), R8 = the faulting GPA (private: shared bit clear)."""
        args.rcx = 0x2
        args.rdx = 0
        args.r8 = self.fault_gpa
        args.r9 = 0

    def preempt_with_rearm(self) -> None:
        """The timer handler's WRMSR(IA32_TSC_DEADLINE) comes before the rest of the period."""
        if self.saved is None:
            self.saved = (self.remaining_ns, self.kind, self.tdvmcall_key, self._regs)
            self.remaining_ns = self.c_tdvmcall
            self.kind = "tsc_deadline"
            self.tdvmcall_key = "tdvmcall.tsc_deadline"
            self._regs = (0, arch.TDVMCALL_WRMSR, MSR_IA32_TSC_DEADLINE, 1, 0, 0)
        self.rearm_due = False

    def next_period(self) -> None:
        self.awaiting = False  # the TDVMCALL (e.g. the re-arm WRMSR) completed
        if self.saved is not None:
            self.remaining_ns, self.kind, self.tdvmcall_key, self._regs = self.saved
            self.saved = None
            self.remaining_ns += self.irq_debt_ns
            self.irq_debt_ns = 0
            return
        debt = self.irq_debt_ns
        super().next_period()
        compute = self.remaining_ns - self.c_tdvmcall - debt
        fault = self.fault_left_ns
        if fault <= compute and fault <= self.ipi_left_ns:
            # the period ends in an EPT violation on a private page (a hardware exit: no
            # #VE / TDCALL set-up in the guest)
            self.remaining_ns = fault + debt
            self.kind = "ept_violation"
            self.tdvmcall_key = ""
            self.fault_gpa += 0x1000
            self.ipi_left_ns -= fault
            self.fault_left_ns = exp_ns(self.ipi_rng, self.fault_mean_ns)
            return
        self.fault_left_ns -= min(compute, self.ipi_left_ns)
        if (self.kind == "hlt" and self.hlt_irqs_off_p
                and self.ipi_rng.random() < self.hlt_irqs_off_p):
            # HLT with interrupts disabled: R12 = 1 (only an NMI wakes the vCPU)
            self._regs = (0, arch.TDVMCALL_HLT, 1, 0, 0, 0)
        if self.ipi_left_ns <= compute:
            self.remaining_ns = self.ipi_left_ns + self.c_tdvmcall + debt
            self.kind = "ipi"
            self.tdvmcall_key = "tdvmcall.ipi"
            self._regs = (0, arch.TDVMCALL_WRMSR, MSR_X2APIC_ICR, self.icr, 0, 0)
            self.ipi_left_ns = exp_ns(self.ipi_rng, self.ipi_mean_ns)
        else:
            self.ipi_left_ns -= compute


def irq_guest(scope: VcpuScope, seed: int, vm: VmConfig, c_tdvmcall: int,
              periods: PeriodSource | None = None) -> IrqGuestVcpu | None:
    """The guest of one vCPU of `vm` if it needs `IrqGuestVcpu` (IPIs, one-shot timer
    re-arms, private faults, HLT with interrupts disabled), else None."""
    wl = vm.workload
    intr = vm.interrupts
    fault_hz = vm.sept.private_fault_hz
    if not (intr.ipi_hz > 0 or wl.timer_oneshot or fault_hz > 0 or intr.hlt_irqs_off_p > 0):
        return None
    pattern = intr.ipi_pattern
    return IrqGuestVcpu(scope.stream(seed, "workload"), wl.compute_ns, wl.compute_exp,
                        wl.mix, c_tdvmcall, scope.stream(seed, "ipi"),
                        int(1e9 / intr.ipi_hz) if intr.ipi_hz else 0,
                        IPI_VECTOR[pattern] | ICR_SHORTHAND[pattern], wl.timer_oneshot,
                        int(1e9 / fault_hz) if fault_hz else 0, intr.hlt_irqs_off_p,
                        periods)
