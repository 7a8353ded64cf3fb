"""CPU hot-unplug ([[host.hotplug]]): the scheduler empties the CPU, then kvm_offline_cpu
runs there -- tdx_disable_virtualization_cpu flushes the TD vCPUs still associated with it,
then drop_user_return_notifiers restores the user-return MSRs.

The counts below follow from that order.  One vCPU, pinned to cpu1, on a 2-CPU host with no
tick and no host task; cpu1 goes offline at 500 us:

* running (CPUID exits only): the offline preempts it; it is put on cpu1, moved to cpu0
  (its pin broken), and tdx_vcpu_load's flush IPI reaches cpu1, which is still online: one
  TDH.VP.FLUSH, one migration.  The teardown then finds cpu1's list empty.  KVM's notifier
  is registered on cpu1 (the current strategy's prepare wrote the TDX module's values of
  the four user-return MSRs it clobbers), so drop_user_return_notifiers writes their host
  values back: 4 WRMSRs at site user_return, the only ones (the vCPU never returns to
  user mode);
* halted (HLT exits, woken by a 1 kHz timer): blocked at 500 us, still associated with
  cpu1, so the teardown itself flushes it (one TDH.VP.FLUSH); its next load, on cpu0, finds
  vcpu->cpu = -1: no IPI and no migration.
"""

import pytest

from tdsim.scenario import ScenarioError, scenario_from_dict
from tdsim.sim import Simulation
from tdsim.strategies import MODULE_URET_VALUES
from tdsim.trace import Tracer


def one_vcpu_on_cpu1(mix, timer_hz=0, variants=(), tracer=None, hotplug=None):
    return Simulation(scenario_from_dict({
        "sim": {"duration_us": 2000, "seed": 1},
        "host": {"cpus": 2, "tick_hz": 0,
                 "hotplug": hotplug or [{"cpu": 1, "offline_us": 500}]},
        "vm": [{"vcpus": 1, "pin": [1], "workload": {
            "compute_us": 5, "compute_dist": "fixed", "mix": mix, "timer_hz": timer_hz}}]}),
        tracer, variants=list(variants)).run()


RUNNING = {"cpuid": 1.0}
HALTING = {"hlt": 1.0}


def test_a_running_vcpu_is_moved_and_flushed_by_its_new_cpu():
    tracer = Tracer()
    r = one_vcpu_on_cpu1(RUNNING, tracer=tracer)
    assert r.violations == []
    m = r.metrics
    assert m["cpu_offline"] == 1
    assert m["migrations"] == 1
    assert m["seamcall.TDH_VP_FLUSH.status.TDX_SUCCESS"] == 1
    assert m["wrmsr.site.user_return"] == len(MODULE_URET_VALUES) == 4
    # the order: put on cpu1, loaded on cpu0 with the flush on cpu1, then the teardown
    kinds = [(e[1], e[2]) for e in tracer.events if e[0] >= 500_000 and e[1] in (
        "vcpu_put", "vcpu_load", "seamcall", "cpu_hotplug") and not (
        e[1] == "seamcall" and e[4]["leaf"] == "TDH_VP_ENTER")]
    assert kinds[:4] == [("vcpu_put", 1), ("seamcall", 1), ("vcpu_load", 0),
                         ("cpu_hotplug", 1)]


def test_a_halted_vcpu_is_flushed_by_the_teardown():
    tracer = Tracer()
    r = one_vcpu_on_cpu1(HALTING, timer_hz=1000, tracer=tracer)
    assert r.violations == []
    m = r.metrics
    assert m["seamcall.TDH_VP_FLUSH.status.TDX_SUCCESS"] == 1
    assert m["migrations"] == 0
    [flush] = [e for e in tracer.events if e[1] == "seamcall" and e[4]["leaf"] == "TDH_VP_FLUSH"]
    assert flush[0] == 500_000  # at the offline: the CPU had nothing to move
    assert flush[2] == 1
    loads = [e for e in tracer.events if e[1] == "vcpu_load" and e[0] > 500_000]
    assert loads[0][2] == 0
    assert loads[0][4] == {"migrated": True, "prev_cpu": -1}


def test_skipping_the_flush_is_caught_at_the_offline_and_at_the_next_entry():
    """Without tdx_disable_virtualization_cpu the halted vCPU stays associated with cpu1;
    when it wakes on cpu0, tdx_vcpu_load's flush IPI cannot reach the offline CPU and the
    TDX module refuses the entry."""
    r = one_vcpu_on_cpu1(HALTING, timer_hz=1000, variants=["offline_skips_flush"])
    assert r.metrics["violations.offline_cpu_state"] == 1
    assert r.metrics["violations.entry_on_associated_vcpu"] == 1
    v = next(v for v in r.violations if v["invariant"] == "offline_cpu_state")
    assert v["detail"] == ("cpu1 went offline with td0.vcpu0 still associated with it "
                           "(never TDH.VP.FLUSHed there)")


def test_skipping_the_notifier_drop_is_caught_per_msr():
    """Without drop_user_return_notifiers the four module values stay in cpu1's MSRs and
    the notifier stays registered: 4 + 1 findings."""
    r = one_vcpu_on_cpu1(RUNNING, variants=["offline_keeps_uret"])
    assert r.metrics["violations.offline_cpu_state"] == len(MODULE_URET_VALUES) + 1


def test_the_cpu_comes_back_with_host_values_and_is_used_again():
    """Back online at 1 ms: cpu_init's host values, KVM's user-return state read afresh,
    and the CPU idle-balances: with one vCPU and nothing else, it stays idle (the vCPU's
    pin was broken, it runs where it was moved)."""
    r = one_vcpu_on_cpu1(RUNNING, hotplug=[{"cpu": 1, "offline_us": 500, "online_us": 1000}])
    assert r.violations == []
    assert r.metrics["cpu_online"] == 1
    assert r.metrics["cpu.1.ns.idle"] >= 1_000_000


@pytest.mark.parametrize(("hotplug", "message"), [
    ([{"cpu": 2, "offline_us": 5}], "host.hotplug[0].cpu: CPU 2 does not exist"),
    ([{"cpu": 1, "offline_us": 5, "online_us": 5}], "host.hotplug[0].online_us: 5"),
    ([{"cpu": 1, "offline_us": 5}, {"cpu": 1, "offline_us": 9}],
     "host.hotplug[0]: CPU 1 is taken offline again while already offline"),
    ([{"cpu": 0, "offline_us": 5}, {"cpu": 1, "offline_us": 9}],
     "host.hotplug[1]: at 9 us no CPU would be left online"),
])
def test_impossible_hotplug_scripts_are_refused(hotplug, message):
    with pytest.raises(ScenarioError, match=message.replace("[", r"\[").replace("]", r"\]")):
        scenario_from_dict({"host": {"cpus": 2, "hotplug": hotplug}})
