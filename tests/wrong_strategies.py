"""Deliberately wrong host-state strategies, written as user strategies through the public
interface (tdsim.strategies), each meant to be caught by one oracle (tests/test_oracles.py)."""

from tdsim import arch
from tdsim.strategies import (
    MODULE_URET_VALUES,
    SITE_PUT,
    Current,
    HostStateStrategy,
)


class SkipKgsRestoreWhenAborted(Current):
    """Wrong: skips the KERNEL_GS_BASE restore at put when the last TDH.VP.ENTER returned an
    error (reasoning "the TD did not run, so nothing was clobbered") -- but an earlier entry
    in the same load period did run and zeroed it.  Caught by host_state_leak."""

    name = "skip-kgs-restore-when-aborted"

    def vcpu_enter_exit(self, vcpu, cpu, vp_enter_ret):
        vcpu.guest_entered = not vp_enter_ret & arch.TDX_ERROR

    def prepare_switch_to_host(self, vcpu, cpu):
        if vcpu.guest_entered:
            cpu.wrmsr(arch.MSR_KERNEL_GS_BASE, vcpu.msr_host_kernel_gs_base, SITE_PUT)


class CacheOnlyUret(HostStateStrategy):
    """Wrong: tells KVM's user-return cache the module's values at prepare time without
    writing them.  Right if the TD runs; a lie if the entry aborts.  Caught by
    uret_cache_mismatch."""

    name = "cache-only-uret"

    def prepare_switch_to_guest(self, vcpu, cpu):
        vcpu.msr_host_kernel_gs_base = vcpu.host_gsbase()
        for slot, value in MODULE_URET_VALUES:
            cpu.uret.update_cache(slot, value)

    def prepare_switch_to_host(self, vcpu, cpu):
        cpu.wrmsr(arch.MSR_KERNEL_GS_BASE, vcpu.msr_host_kernel_gs_base, SITE_PUT)


class NeverRestoreOnUserReturn(Current):
    """Wrong: the user-return notifier unregisters but restores nothing.  Caught by
    host_state_leak."""

    name = "never-restore-on-user-return"

    def user_return(self, cpu):
        cpu.uret.registered = False


class SaveKgsOncePerVcpu(Current):
    """Wrong: saves the host KERNEL_GS_BASE only at the vCPU's first
    tdx_prepare_switch_to_guest ("the vCPU thread's GS base never changes") -- but the VMM's
    user code may change it between KVM_RUN calls.  The next put writes the old base back:
    caught by kernel_gs_base_not_restored (and host_state_leak at the return to user
    mode)."""

    name = "save-kgs-once-per-vcpu"

    def prepare_switch_to_guest(self, vcpu, cpu):
        saved = vcpu.msr_host_kernel_gs_base
        super().prepare_switch_to_guest(vcpu, cpu)
        if saved:
            vcpu.msr_host_kernel_gs_base = saved
