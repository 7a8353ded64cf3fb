"""The vCPU thread's GS base changing between KVM_RUN calls ([host] gs_base_change_hz).

The TDX host path saves current->thread.gsbase at the first tdx_prepare_switch_to_guest of a
load and writes it back at the put; VMX's vmx_prepare_switch_to_guest first refreshes
thread.gsbase from the hardware (current_save_fsgs).  With a change rate of 1/ns every exit
serviced in userspace changes the base (the probability 1 - exp(-rate x service time) rounds
to 1), so the counts below follow from the kernel's order of operations alone.
"""

from pathlib import Path

import pytest

from tdsim.scenario import scenario_from_dict
from tdsim.sim import Simulation

WRONG = Path(__file__).with_name("wrong_strategies.py")


def every_userspace_exit_changes_gs(via, flavor="tdx", host_state="current"):
    """One vCPU pinned alone on CPU 1 (no preemption, no context switch), I/O exits only."""
    return Simulation(scenario_from_dict({
        "sim": {"duration_us": 200, "seed": 1},
        "host": {"cpus": 2, "tick_hz": 0, "gs_base_change_hz": 1e9, "gs_base_change": via},
        "kvm": {"host_state": host_state},
        "vm": [{"vcpus": 1, "pin": [1], "flavor": flavor, "workload": {
            "compute_us": 5, "compute_dist": "fixed", "mix": {"io": 1.0}}}]})).run()


def test_arch_prctl_keeps_the_new_base_under_every_builtin_strategy():
    """ARCH_SET_GS updates thread.gsbase with the hardware: nothing to find."""
    for strategy in ("current", "v6.16", "eager"):
        r = every_userspace_exit_changes_gs("arch_prctl", host_state=strategy)
        assert r.violations == []
        assert r.metrics["gs_base_changes"] >= 10


def test_a_strategy_that_saves_the_base_once_per_vcpu_hands_back_the_old_one():
    """After the first KVM_RUN every put writes the first base back: one
    kernel_gs_base_not_restored per later KVM_RUN return, one host_state_leak at each return
    to user mode that follows."""
    r = every_userspace_exit_changes_gs(
        "arch_prctl", host_state=f"{WRONG}:SaveKgsOncePerVcpu")
    returns = r.metrics["vcpu_put.cause.kvm_run_return"]
    assert returns >= 10
    assert r.metrics["vcpu_put"] == returns  # no other put: no halt, no preemption
    assert r.metrics["violations.kernel_gs_base_not_restored"] == returns - 1
    assert r.metrics["violations.host_state_leak"] == returns - 1


def test_a_user_wrgsbase_is_lost_by_the_tdx_put_but_not_by_vmx():
    """WRGSBASE in user mode leaves thread.gsbase stale; with no context switch before the
    next KVM_RUN, tdx_prepare_switch_to_guest saves the stale value and the put writes it
    back (every KVM_RUN after the first).  vmx_prepare_switch_to_guest's
    current_save_fsgs() reads the new base first: nothing to find."""
    r = every_userspace_exit_changes_gs("wrgsbase")
    returns = r.metrics["vcpu_put.cause.kvm_run_return"]
    assert returns >= 10
    assert r.metrics["violations.kernel_gs_base_not_restored"] == returns - 1
    v = next(v for v in r.violations if v["invariant"] == "kernel_gs_base_not_restored")
    # the first loss: the thread's first base written back over the first change (+64 KiB)
    assert v["detail"] == ("after vcpu_put KERNEL_GS_BASE=0x7f5500000000, host value "
                           "0x7f5500010000")
    vmx = every_userspace_exit_changes_gs("wrgsbase", flavor="vmx")
    assert vmx.violations == []
    assert vmx.metrics["gs_base_changes"] >= 10


@pytest.mark.parametrize("via", ["arch_prctl", "wrgsbase"])
def test_no_change_at_rate_zero(via):
    """The default rate draws nothing and changes nothing."""
    r = Simulation(scenario_from_dict({
        "sim": {"duration_us": 100}, "host": {"gs_base_change": via},
        "vm": [{"vcpus": 1, "workload": {"mix": {"io": 1.0}}}]})).run()
    assert "gs_base_changes" not in r.metrics
    assert r.violations == []
