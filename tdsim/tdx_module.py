"""The Intel TDX module as KVM sees it: SEAMCALLs with their register ABI and status codes.

Modelled leaves: TDH.VP.ENTER (entry checks, vCPU-to-LP association, the TD exit with the
values the module leaves in host MSRs), TDH.VP.FLUSH, TDH.VP.RD and TDH.VP.WR.  Outcomes are
values (64-bit statuses), never exceptions, as in KVM.

TDH.VP.ENTER is split in two, because the model spends the guest's run in one SimPy timeout:
`tdh_vp_enter_check` runs the module's pre-entry checks when KVM issues the SEAMCALL (no side
effects: the entry may still be cut short by an interrupt that makes the CPU exit at once), and
`tdh_vp_enter_exit` applies everything the module does from VM entry to SEAMRET at the instant
the TD exits: association, TDVPR switch flush, then the TD exit itself (guest registers into
`vp_enter_args`, fixed values into host MSRs, reference §2.1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import arch
from .faults import ASSOCIATES

if TYPE_CHECKING:
    from .host import HostCpu
    from .kvm_tdx import VcpuTdx
    from .sim import Simulation


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


_VP_ENTER_KEY, _VP_ENTER_SUCCESS_KEY = seamcall_keys(arch.TDH_VP_ENTER, arch.TDX_SUCCESS)


class TdxModule:
    """The TDX module of one host: per-vCPU association and per-LP TDVPR tracking."""

    def __init__(self, sim: "Simulation") -> None:
        self.sim = sim

    def count(self, cpu: "HostCpu", leaf: int, status: int) -> None:
        k_leaf, k_status = seamcall_keys(leaf, status)
        stat = cpu.stat
        stat[k_leaf] += 1
        stat[k_status] += 1
        tracer = self.sim.tracer
        if tracer is not None:
            cur = cpu.curr
            tracer.emit(self.sim.env.now, "seamcall", cpu.index, cur.name if cur else None,
                        leaf=arch.SEAMCALL_NAMES[leaf], status=arch.tdx_status_name(status))

    # --- TDH.VP.ENTER --------------------------------------------------------------------
    def tdh_vp_enter_check(self, vcpu: "VcpuTdx", cpu: "HostCpu") -> int:
        """The module's pre-entry checks (tdh_vp_enter.c, reference §3.4 steps 1-6).

        Returns TDX_SUCCESS if the TD will be entered, else the error status the SEAMCALL
        returns without entering (host MSRs untouched).  Association: a vCPU associated
        with another LP cannot be entered here (TDX_VCPU_ASSOCIATED)."""
        assoc = vcpu.module_assoc_cpu
        if assoc is not None and assoc is not cpu:
            # issue 3 oracle: KVM must have flushed the vCPU off the old LP (reference §6)
            self.sim.invariants.record(
                "entry_on_associated_vcpu", cpu.index, vcpu.name,
                f"TDH.VP.ENTER on cpu{cpu.index} while associated with cpu{assoc.index}")
            return arch.TDX_VCPU_ASSOCIATED
        vm = vcpu.vm
        if vm.epoch_lock_t0 <= vcpu.t_seamcall < vm.epoch_lock_t1:
            # issue 4: TDH.MEM.TRACK holds the TD epoch lock exclusively (reference §7.1)
            return arch.TDX_OPERAND_BUSY | arch.TDX_OPERAND_ID_TD_EPOCH
        return arch.TDX_SUCCESS

    def entry_cost(self, vcpu: "VcpuTdx", cpu: "HostCpu") -> int:
        """Time from SEAMCALL to VM entry: transition + module entry work (+ the ASID flush
        and IBPB when this LP last ran a different TDVPR, §3.4 step 7)."""
        sim = self.sim
        ns = sim.c_seamcall + sim.c_td_entry
        if cpu.last_tdvpr is not vcpu:
            ns += sim.c_first_entry_flush
        return ns

    def tdh_vp_enter_exit(self, vcpu: "VcpuTdx", cpu: "HostCpu", exit_reason: int) -> int:
        """Everything from VM entry to SEAMRET, applied at the TD exit.

        Associates the vCPU with this LP, records the TDVPR, then performs the TD exit:
        guest GPRs the guest exposed go to ``vp_enter_args`` (the caller filled
        ``vcpu.guest_regs`` for a TDVMCALL), and host MSRs get the module's fixed values.
        Returns ``vp_enter_ret`` (status in bits 63:32, VMX exit reason in 31:0)."""
        vcpu.module_assoc_cpu = cpu
        cpu.last_tdvpr = vcpu
        cpu.msr.update(arch.TDX_MODULE_EXIT_MSRS)
        # count(TDH_VP_ENTER, TDX_SUCCESS) inlined: the caller traces the SEAMCALL with
        # its kvm_entry event (one tracer test per exit instead of two).
        stat = cpu.stat
        stat[_VP_ENTER_KEY] += 1
        stat[_VP_ENTER_SUCCESS_KEY] += 1
        return arch.TDX_SUCCESS | exit_reason

    def tdh_vp_enter_fail(self, vcpu: "VcpuTdx", cpu: "HostCpu", status: int,
                          kind: str | None = None) -> int:
        """TDH.VP.ENTER returned an error without entering: no MSR was touched.

        issue 3: refusals raised after check_and_associate_vcpu (§3.4 step 3: TSC_ROLLBACK,
        INCONSISTENT_MSR, the epoch/SEPT OPERAND_BUSY, the zero-step exit) leave the vCPU
        associated with this LP."""
        if kind in ASSOCIATES:
            vcpu.module_assoc_cpu = cpu
        if (status & arch.TDX_SEAMCALL_STATUS_MASK) == arch.TDX_OPERAND_BUSY:
            cpu.stat[f"seamcall.TDH_VP_ENTER.operand_busy.{status & 0xFFFF:#x}"] += 1
        self.count(cpu, arch.TDH_VP_ENTER, status & arch.TDX_SEAMCALL_STATUS_MASK
                   if (status & arch.TDX_SW_ERROR) != arch.TDX_SW_ERROR else status)
        return status

    def tdh_vp_enter_exit_status(self, vcpu: "VcpuTdx", cpu: "HostCpu", ret: int) -> int:
        """issue 3: the TD was entered (guest state loaded, so the TD exit leaves the module's
        fixed values in host MSRs) and the SEAMCALL returned the injected status `ret`
        (non-recoverable, failed VM entry, detail-less error, genuine EPT misconfig).
        Assumption: a failed VM entry happens after the guest-state load (§3.4 steps 8, 10)."""
        vcpu.module_assoc_cpu = cpu
        cpu.last_tdvpr = vcpu
        cpu.msr.update(arch.TDX_MODULE_EXIT_MSRS)
        self.count(cpu, arch.TDH_VP_ENTER, ret & arch.TDX_SEAMCALL_STATUS_MASK)
        return ret

    # --- other vCPU-scope leaves ---------------------------------------------------------
    def tdh_vp_flush(self, vcpu: "VcpuTdx", cpu: "HostCpu") -> int:
        """TDH.VP.FLUSH on `cpu` (the LP the vCPU was associated with): write back and
        dissociate.  TDX_VCPU_NOT_ASSOCIATED if it was not associated there."""
        if vcpu.module_assoc_cpu is not cpu:
            status = arch.TDX_VCPU_NOT_ASSOCIATED
        else:
            vcpu.module_assoc_cpu = None
            if cpu.last_tdvpr is vcpu:
                cpu.last_tdvpr = None
            status = arch.TDX_SUCCESS
        self.count(cpu, arch.TDH_VP_FLUSH, status)
        return status

    def tdh_vp_rd(self, vcpu: "VcpuTdx", cpu: "HostCpu", field: str) -> tuple[int, int]:
        """TDH.VP.RD of a TD vCPU field; returns (status, value)."""
        cpu.acc += self.sim.c_tdh_vp_rd
        self.count(cpu, arch.TDH_VP_RD, arch.TDX_SUCCESS)
        return arch.TDX_SUCCESS, vcpu.module_fields.get(field, 0)

    def tdh_vp_wr(self, vcpu: "VcpuTdx", cpu: "HostCpu", field: str, value: int) -> int:
        """TDH.VP.WR of a TD vCPU field (e.g. TD_VCPU_PEND_NMI)."""
        cpu.acc += self.sim.c_tdh_vp_wr
        vcpu.module_fields[field] = value
        self.count(cpu, arch.TDH_VP_WR, arch.TDX_SUCCESS)
        return arch.TDX_SUCCESS
