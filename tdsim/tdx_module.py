"""The Intel TDX module as KVM sees it: SEAMCALLs with their register ABI and status codes.

Modelled leaves: TDH.VP.ENTER (entry checks, vCPU-to-LP association, the guest's run, the TD
exit with the values the module leaves in host MSRs), TDH.VP.FLUSH, TDH.VP.RD and TDH.VP.WR;
the SEPT leaves are issued by `tdsim.sept`.  Outcomes are values (64-bit statuses), never
exceptions, as in KVM (arch/x86/virt/vmx/tdx/tdx.c wraps each leaf in a function returning
the status).

`TdxModule.tdh_vp_enter` is the one SEAMCALL during which guest time passes: it runs the
module's pre-entry checks, then the guest until its next exit (the entry segment of
`tdsim.segment`), then the TD exit, and returns ``vp_enter_ret`` with the output registers in
the vCPU's ``vp_enter_args``.  What happens at VM entry (the CPU's PIR processing, the
module's NMI injection) is applied at the exit, when it is known that the guest ran.

Fault injection (`tdsim.faults`) can make the module refuse an entry or enter and exit at once
with a chosen status; the vCPU records which (``seg_fault``) for KVM's counters.  A scripted
guest's ``vp_enter`` step does the same through the same hook, deterministically (kind
``"scripted"``), and gives the output registers the module would return (``vp_enter_regs``,
applied after the module zeroed them).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Protocol

from mypy_extensions import mypyc_attr
from simpy import Interrupt, Timeout

from . import arch

if TYPE_CHECKING:
    from .clock import Environment
    from .config import Costs
    from .findings import Findings
    from .host import Cause, HostCpu
    from .trace import Tracer


class TdState(Protocol):
    """What the TDX module reads of a TD (the KVM side is `tdsim.kvm_tdx.KvmTdx`): its epoch
    lock window, the window in which no vCPU may enter, and the host state its exits leave."""

    @property
    def epoch_lock_t0(self) -> int: ...
    @property
    def epoch_lock_t1(self) -> int: ...
    @property
    def zap_excl_t0(self) -> int: ...
    @property
    def zap_excl_t1(self) -> int: ...
    @property
    def module_exit_msrs(self) -> dict[int, int]: ...
    @property
    def module_exit_xcr0(self) -> int: ...


class TdVcpu(Protocol):
    """What the TDX module touches of a TD vCPU (`tdsim.kvm_tdx.VcpuTdx` implements it): its
    TDVPR state (association, fields), the entry segment the SEAMCALL spends its time in
    (`tdsim.segment`), and the guest's side of the entry and exit.  Declared here so that the
    module's layer does not import KVM's."""

    name: str
    module_assoc_cpu: HostCpu | None
    module_fields: dict[str, int]
    pi_src: dict[int, tuple[int, str]]
    seg_pi: int
    seg_status: int
    seg_exit: int | None
    seg_fault: str | None
    t_enter: int
    t_seamcall: int
    exit_work: dict[str, tuple[int, str]]

    @property
    def tdx_vm(self) -> TdState: ...
    @property
    def entry_ns(self) -> int: ...
    @property
    def guest(self) -> Any: ...
    def begin_entry(self, cpu: HostCpu, guest_ns: int, exit_ns: int) -> Timeout: ...
    def end_entry(self) -> None: ...
    def cut_entry(self, cause: Cause, cut_exit_ns: int) -> Generator[Any, Any, Any]: ...
    def run_entry(self, cpu: HostCpu, guest_ns: int, exit_ns: int,
                  cut_exit_ns: int) -> Generator[Any, Any, Any]: ...
    def plan_guest_run(self) -> int: ...
    def at_td_entry(self, cut: Any) -> None: ...
    def at_td_exit(self, cut: Any) -> int: ...


# Refusals raised after check_and_associate_vcpu (in tdh_vp_enter.c): the vCPU is associated
# with the LP even though the TD is not entered.
ASSOCIATES = frozenset({"zero_step", "tsc_rollback", "inconsistent_msr", "operand_busy_late"})
# The zero-step mitigation's synthesized EPT violation: RCX = write-access qualification.
EPT_VIOLATION_WRITE_QUAL = 0x2
ZERO_STEP_GPA = 0x7FF000
# The module outcome a scripted guest's vp_enter step forced (tdsim.program)
SCRIPTED = "scripted"
# Injected exit statuses of an entered TD that are not entry aborts, and scripted outcomes
# (faults.<kind> counters)
INJECTED_EXIT_KEYS = {k: f"faults.{k}" for k in ("non_recoverable", "error_exit",
                                                 "genuine_ept_misconfig", SCRIPTED)}
# The 13 registers of struct tdx_module_args, in its order.
TDX_MODULE_ARGS = ("rcx", "rdx", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
                   "rbx", "rdi", "rsi")

# What TDH.VP.ENTER does this time, when fault injection or a script decides: (status or
# TDX_SUCCESS, injected exit status or None, kind or None); see tdsim.faults, tdsim.build.
VpEnterOutcome = Callable[[Any], tuple[int, "int | None", "str | None"]]
# The output registers of a scripted outcome, written over the zeroed vp_enter_args
VpEnterRegs = Callable[[Any, "TdxModuleArgs"], None]


@mypyc_attr(allow_interpreted_subclasses=True)
class TdxModuleArgs:
    """struct tdx_module_args: the 13 GPRs passed to and returned by a SEAMCALL.

    KVM keeps one per vCPU as ``vp_enter_args``: input of TDH.VP.ENTER (e.g. TDVMCALL
    results in R10/R11) and output of the previous exit."""

    __slots__ = ("rcx", "rdx", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
                 "rbx", "rdi", "rsi")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.rcx = self.rdx = self.r8 = self.r9 = 0
        self.r10 = self.r11 = self.r12 = self.r13 = self.r14 = self.r15 = 0
        self.rbx = self.rdi = self.rsi = 0


_SEAMCALL_KEYS: dict[tuple[int, int], tuple[str, str]] = {}


def seamcall_keys(leaf: int, status: int) -> tuple[str, str]:
    """Metric keys (seamcall.<LEAF>, seamcall.<LEAF>.status.<NAME>), cached."""
    key = (leaf, status)
    keys = _SEAMCALL_KEYS.get(key)
    if keys is None:
        name = arch.SEAMCALL_NAMES[leaf]
        keys = (f"seamcall.{name}", f"seamcall.{name}.status.{arch.tdx_status_name(status)}")
        _SEAMCALL_KEYS[key] = keys
    return keys


_VP_ENTER_SUCCESS_KEY = seamcall_keys(arch.TDH_VP_ENTER, arch.TDX_SUCCESS)[1]
_STATUS = arch.TDX_SEAMCALL_STATUS_MASK
_BUSY_TD_EPOCH = arch.TDX_OPERAND_BUSY | arch.TDX_OPERAND_ID_TD_EPOCH


class TdxModule:
    """The TDX module of one host: its per-LP state (the TDVPR each LP last entered) and
    the SEAMCALLs KVM's vCPU path issues."""

    def __init__(self, env: Environment, ncpus: int, costs: Costs, findings: Findings,
                 tracer: Tracer | None) -> None:
        self.env = env
        self.costs = costs
        self.vp_enter_outcome: VpEnterOutcome | None = None  # fault injection, if any
        self.c_td_exit = costs.td_exit_ns
        self.c_first_entry_flush = costs.first_entry_flush_ns
        self.vp_enter_regs: VpEnterRegs | None = None  # a scripted outcome's registers
        self.findings = findings
        self.tracer = tracer
        self.lp_last_tdvpr: list[TdVcpu | None] = [None] * ncpus

    def count(self, cpu: HostCpu, leaf: int, status: int) -> None:
        """Count (and trace) one SEAMCALL issued on `cpu` and the status it returned."""
        cpu.stat[seamcall_keys(leaf, status)[1]] += 1  # (seamcall.<LEAF>: the sum)
        tracer = self.tracer
        if tracer is not None:
            cur = cpu.curr
            tracer.emit(self.env.now, "seamcall", cpu.index, cur.name if cur else None,
                        leaf=arch.SEAMCALL_NAMES[leaf], status=arch.tdx_status_name(status))

    # --- TDH.VP.ENTER --------------------------------------------------------------------
    def tdh_vp_enter(self, vcpu: TdVcpu, cpu: HostCpu,
                     args: TdxModuleArgs) -> Generator[Any, Any, int]:
        """SEAMCALL TDH.VP.ENTER: enter the TD and return at its next exit.  Returns the
        64-bit status (class in bits 63:32, VMX exit reason in 31:0); the output registers
        are in `args`.  A refused entry returns at once with an error status, and the host
        MSRs untouched."""
        vcpu.t_seamcall = t_seamcall = self.env._now + cpu.acc
        # the module's pre-entry checks (tdh_vp_enter.c, in order; none has a side effect):
        # a vCPU associated with another LP cannot be entered here (KVM must TDH.VP.FLUSH it
        # there first); while TDH.MEM.TRACK holds the TD epoch lock the entry is busy
        assoc = vcpu.module_assoc_cpu
        vm = vcpu.tdx_vm
        if assoc is not None and assoc is not cpu:
            status = self.vcpu_associated_elsewhere(vcpu, cpu, assoc)
        elif vm.epoch_lock_t0 <= t_seamcall < vm.epoch_lock_t1:
            status = _BUSY_TD_EPOCH
        else:
            status = 0  # TDX_SUCCESS
        outcome = self.vp_enter_outcome
        if status or outcome is not None:  # refused, or fault injection decides
            return (yield from self.vp_enter_unusual(vcpu, cpu, args, status, outcome))
        vcpu.seg_status = 0
        vcpu.seg_exit = vcpu.seg_fault = None
        if self.lp_last_tdvpr[cpu.index] is vcpu:
            cpu.acc += vcpu.entry_ns  # SEAMCALL, the module's entry work (and regs copy)
        else:
            # this LP last ran another TDVPR: the module flushes (ASID flush, IBPB)
            cpu.acc += vcpu.entry_ns + self.c_first_entry_flush
        # the guest runs until its next exit, unless something cuts its run short
        td_exit_ns = self.c_td_exit
        ev = vcpu.begin_entry(cpu, vcpu.plan_guest_run(), td_exit_ns)
        try:
            yield ev
        except Interrupt as intr:
            cause: Any = intr.cause  # (a tdsim.host.Cause)
            cut = yield from vcpu.cut_entry(cause, td_exit_ns)
        else:
            vcpu.end_entry()
            cut = None
        if (vcpu.seg_pi or vcpu.module_fields or vcpu.pi_src or vcpu.guest.awaiting
                or vcpu.exit_work
                or vm.zap_excl_t0 <= vcpu.t_enter < vm.zap_excl_t1):
            vcpu.at_td_entry(cut)  # (anything to do at TD entry)
        ret = self.td_exit(vcpu, cpu, vcpu.at_td_exit(cut))
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env._now, "seamcall", cpu.index, vcpu.name,  # at its return
                        leaf="TDH_VP_ENTER", status="TDX_SUCCESS")
            tracer.emit(vcpu.t_enter, "kvm_entry", cpu.index, vcpu.name)
        return ret

    def vcpu_associated_elsewhere(self, vcpu: TdVcpu, cpu: HostCpu, assoc: HostCpu) -> int:
        """TDH.VP.ENTER of a vCPU the module has associated with another LP: refused with
        TDX_VCPU_ASSOCIATED (and the oracle records that KVM let it happen)."""
        self.findings.record(
            "entry_on_associated_vcpu", cpu.index, vcpu.name,
            f"TDH.VP.ENTER on cpu{cpu.index} while associated with cpu{assoc.index}")
        return arch.TDX_VCPU_ASSOCIATED

    def vp_enter_unusual(self, vcpu: TdVcpu, cpu: HostCpu, args: TdxModuleArgs,
                             status: int, outcome: VpEnterOutcome | None
                             ) -> Generator[Any, Any, int]:
        """TDH.VP.ENTER when its checks refused the entry (`status`), or when fault
        injection decides what it does this time: refused without entering, entered and
        exited at once with an injected status, or (nothing injected) the common path."""
        costs = self.costs
        injected: int | None = None
        fault: str | None = None
        if status == arch.TDX_SUCCESS:
            if outcome is not None:
                status, injected, fault = outcome(vcpu)
        elif status == arch.TDX_VCPU_ASSOCIATED:
            fault = "vcpu_associated"
        else:  # the TD epoch is busy: raised after the module associated the vCPU here
            fault = "operand_busy_late"
        vcpu.seg_status = status
        vcpu.seg_exit = injected
        vcpu.seg_fault = fault
        if status:  # != TDX_SUCCESS
            cpu.acc += costs.seamcall_ns
            yield from vcpu.run_entry(cpu, 0, 0, costs.td_exit_ns)
            vcpu.seg_pi = 0
            return self.vp_enter_refused(vcpu, cpu, status, fault, args)
        if self.lp_last_tdvpr[cpu.index] is vcpu:
            cpu.acc += vcpu.entry_ns
        else:
            cpu.acc += vcpu.entry_ns + costs.first_entry_flush_ns
        if injected is not None:
            # the TD is entered (guest state loaded) and exits at once with `injected`
            yield from vcpu.run_entry(cpu, 0, costs.td_exit_ns, costs.td_exit_ns)
            vcpu.seg_pi = 0
            return self.td_exit_with_status(vcpu, cpu, injected, args)
        cut = yield from vcpu.run_entry(cpu, vcpu.plan_guest_run(), costs.td_exit_ns,
                                        costs.td_exit_ns)
        vcpu.at_td_entry(cut)
        ret = self.td_exit(vcpu, cpu, vcpu.at_td_exit(cut))
        tracer = self.tracer
        if tracer is not None:
            tracer.emit(self.env._now, "seamcall", cpu.index, vcpu.name,
                        leaf="TDH_VP_ENTER", status="TDX_SUCCESS")
            tracer.emit(vcpu.t_enter, "kvm_entry", cpu.index, vcpu.name)
        return ret

    def vp_enter_refused(self, vcpu: TdVcpu, cpu: HostCpu, status: int,
                             fault: str | None, args: TdxModuleArgs) -> int:
        """TDH.VP.ENTER returned an error without entering: no MSR was touched.

        Refusals raised after check_and_associate_vcpu (TSC_ROLLBACK, INCONSISTENT_MSR, the
        epoch/SEPT OPERAND_BUSY, the zero-step exit) leave the vCPU associated with this LP.
        The zero-step mitigation's synthesized EPT violation carries an exit qualification
        (RCX, a write) and the GPA (R8); the module zeroes the other GPRs."""
        if fault in ASSOCIATES:
            vcpu.module_assoc_cpu = cpu
        if (status & _STATUS) == arch.TDX_OPERAND_BUSY:
            cpu.stat[f"seamcall.TDH_VP_ENTER.operand_busy.{status & 0xFFFF:#x}"] += 1
        self.count(cpu, arch.TDH_VP_ENTER, status & _STATUS
                   if (status & arch.TDX_SW_ERROR) != arch.TDX_SW_ERROR else status)
        if status == arch.EXIT_REASON_EPT_VIOLATION:
            args.clear()
            args.rcx = EPT_VIOLATION_WRITE_QUAL
            args.r8 = ZERO_STEP_GPA
        if fault == SCRIPTED and self.vp_enter_regs is not None:
            self.vp_enter_regs(vcpu, args)
        return status

    def td_exit_with_status(self, vcpu: TdVcpu, cpu: HostCpu, ret: int,
                            args: TdxModuleArgs) -> int:
        """The TD was entered (guest state loaded, so the exit leaves the module's fixed
        values in host MSRs) and the SEAMCALL returned `ret` (non-recoverable, failed VM
        entry, a detail-less error, a genuine EPT misconfig); the module zeroes the GPRs it
        does not expose.  Assumption: a failed VM entry happens after the guest-state load."""
        vcpu.module_assoc_cpu = cpu
        self.lp_last_tdvpr[cpu.index] = vcpu
        vm = vcpu.tdx_vm  # the host state the exit leaves (KvmTdx.module_exit_msrs)
        cpu.msr.update(vm.module_exit_msrs)
        cpu.xcr0 = vm.module_exit_xcr0
        cpu.pkru = 0
        self.count(cpu, arch.TDH_VP_ENTER, ret & _STATUS)
        tracer = self.tracer
        if tracer is not None:  # the TD was entered (its exit left the module's MSR values)
            tracer.emit(vcpu.t_enter, "kvm_entry", cpu.index, vcpu.name)
        args.clear()
        if vcpu.seg_fault == SCRIPTED and self.vp_enter_regs is not None:
            self.vp_enter_regs(vcpu, args)
        return ret

    def td_exit(self, vcpu: TdVcpu, cpu: HostCpu, exit_reason: int) -> int:
        """The TD exit of a successful entry: the vCPU is associated with this LP, the LP
        holds its TDVPR, and the host MSRs, XCR0 and PKRU get the values the module leaves
        (the guest's exit registers are already in ``vp_enter_args``)."""
        vcpu.module_assoc_cpu = cpu
        self.lp_last_tdvpr[cpu.index] = vcpu
        vm = vcpu.tdx_vm  # the host state the exit leaves (KvmTdx.module_exit_msrs)
        cpu.msr.update(vm.module_exit_msrs)
        cpu.xcr0 = vm.module_exit_xcr0
        cpu.pkru = 0
        # count(TDH_VP_ENTER, TDX_SUCCESS) inlined: tdh_vp_enter traces the SEAMCALL with
        # its kvm_entry event
        cpu.stat[_VP_ENTER_SUCCESS_KEY] += 1
        return arch.TDX_SUCCESS | exit_reason

    # --- other vCPU-scope leaves ---------------------------------------------------------
    def tdh_vp_flush(self, vcpu: TdVcpu, cpu: HostCpu) -> int:
        """TDH.VP.FLUSH on `cpu` (the LP the vCPU was associated with): write back and
        dissociate.  TDX_VCPU_NOT_ASSOCIATED if it was not associated there."""
        if vcpu.module_assoc_cpu is not cpu:
            status = arch.TDX_VCPU_NOT_ASSOCIATED
        else:
            vcpu.module_assoc_cpu = None
            if self.lp_last_tdvpr[cpu.index] is vcpu:
                self.lp_last_tdvpr[cpu.index] = None
            status = arch.TDX_SUCCESS
        self.count(cpu, arch.TDH_VP_FLUSH, status)
        return status

    def tdh_vp_rd(self, vcpu: TdVcpu, cpu: HostCpu, field: str) -> tuple[int, int]:
        """TDH.VP.RD of a TD vCPU field; returns (status, value)."""
        cpu.acc += self.costs.tdh_vp_rd_ns
        self.count(cpu, arch.TDH_VP_RD, arch.TDX_SUCCESS)
        return arch.TDX_SUCCESS, vcpu.module_fields.get(field, 0)

    def tdh_vp_wr(self, vcpu: TdVcpu, cpu: HostCpu, field: str, value: int) -> int:
        """TDH.VP.WR of a TD vCPU field (e.g. TD_VCPU_PEND_NMI)."""
        cpu.acc += self.costs.tdh_vp_wr_ns
        vcpu.module_fields[field] = value
        self.count(cpu, arch.TDH_VP_WR, arch.TDX_SUCCESS)
        return arch.TDX_SUCCESS
