"""Every oracle has teeth in the shipped set: for each declared finding, a shipped scenario in
which a deliberately wrong variant makes it fire, with the exact count at the scenario's seed,
while the correct configuration of the same scenario records none beyond the findings about
the kernel that the scenario itself presents.

A wrong variant is a host-state strategy (built-in, or in tests/wrong_strategies.py, through
the public interface), a test-only model switch of `tdsim.variants`, or the ``[kvm]
exit_reason = "raw"`` setting.  The list of findings comes from `tdsim.findings.FINDINGS`, so a
new oracle cannot be declared without a row here; every model switch and wrong strategy must be
caught somewhere too.  A change of the model that moves a count is updated here like a
fingerprint, in the same commit, saying why.
"""

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import tests.wrong_strategies
from tdsim.findings import FINDINGS
from tdsim.scenario import load_scenario
from tdsim.sim import Simulation
from tdsim.variants import VARIANTS

SCENARIOS = Path(__file__).parents[1] / "scenarios"
WRONG = Path(__file__).with_name("wrong_strategies.py")


@dataclass(frozen=True)
class Row:
    """`finding` fires `count` times in shipped `scenario` under `wrong` ("strategy:NAME",
    "variant:NAME" or "exit_reason:raw").  `raises`: a broken scheduler also breaks tdsim's
    own consistency checks, which then raise (after the finding was recorded)."""

    finding: str
    scenario: str
    wrong: str
    count: int
    raises: type[Exception] | None = None

    def __str__(self) -> str:
        return f"{self.finding}-{self.scenario}-{self.wrong.split(':')[1]}"


TABLE = (
    # host state, through the public strategy interface
    Row("host_state_leak", "aborts_refusal_preempt", "strategy:SkipKgsRestoreWhenAborted", 6),
    Row("host_state_leak", "baseline", "strategy:NeverRestoreOnUserReturn", 1095),
    # the restores after every TDH.VP.ENTER (tdx_vcpu_run, tdx_load_host_xsave_state)
    Row("host_state_leak", "host_xstate_restores", "variant:no_host_xsave_restore", 1017),
    Row("host_state_leak", "host_xstate_restores", "variant:stale_debugctl", 339),
    Row("uret_cache_mismatch", "aborts_refusal_preempt", "strategy:v6.16", 14),
    Row("uret_cache_mismatch", "aborts_refusal_preempt", "strategy:CacheOnlyUret", 42),
    Row("kernel_gs_base_not_restored", "aborts_refusal_preempt",
        "strategy:SkipKgsRestoreWhenAborted", 6),
    Row("kernel_gs_base_not_restored", "host_gs_base_changes", "strategy:SaveKgsOncePerVcpu",
        1922),
    Row("offline_cpu_state", "host_cpu_hotplug", "variant:offline_skips_flush", 2),
    Row("offline_cpu_state", "host_cpu_hotplug", "variant:offline_keeps_uret", 5),
    Row("guest_msr_corruption", "mixed_td_vmx", "strategy:v6.16", 3),
    Row("guest_msr_corruption", "mixed_td_vmx", "strategy:eager", 695),
    # the scheduler (tdsim's own invariants: the run then fails its CPU-time or event checks)
    Row("cpu_runs_one_thing", "irq_overcommit_migration", "variant:dispatch_on_busy_cpu", 156,
        AssertionError),
    Row("vcpu_on_one_cpu", "irq_overcommit_migration", "variant:pull_without_dequeue", 1,
        RuntimeError),
    # exit-status handling
    Row("error_status_dispatched", "exit_reason_raw", "exit_reason:raw", 1),
    Row("tdvmcall_completion", "exit_reason_raw", "exit_reason:raw", 1),
    Row("spurious_nmi", "aborts_refusal_preempt", "variant:refusal_keeps_exit_reason", 108),
    Row("spurious_external_interrupt", "aborts_refusal_preempt",
        "variant:refusal_keeps_exit_reason", 74),
    Row("entry_on_associated_vcpu", "irq_overcommit_migration",
        "variant:no_flush_on_migration", 10),
    # the late check and kicks
    Row("entry_with_exit_request", "aborts_late_check", "variant:no_late_check", 427),
    Row("kick_exit_delay", "aborts_late_check", "variant:no_kick_ipi", 1253),
    # interrupts, NMIs, halts
    Row("lost_interrupt", "irq_idle_timers", "variant:no_pi_self_ipi", 12588),
    Row("lost_interrupt", "irq_hlt_nmi_ipi", "variant:no_tscdeadline_rearm", 4),
    Row("stuck_halt", "irq_hlt_nmi_ipi", "variant:kick_no_wake", 435),
    Row("stuck_halt", "irq_hlt_nmi_ipi", "variant:lost_wakeup", 443),
    # device posting: the put never switches a halting vCPU to the wake-up vector (SN)
    Row("stuck_halt", "irq_device_posting", "variant:pi_put_no_wakeup_vector", 528),
    Row("nmi_accounting", "irq_nmi_watchdog", "variant:abort_withdraws_nmi", 4),
    # SEPT zaps.  Ignoring the flag also lets an entry take the TD epoch lock during a
    # TDH.MEM.TRACK retry, which is then busy again: tdx_track's TDX_BUG_ON kills the VM
    # (at about 1.15 ms here), so the count stays small.
    Row("td_entry_during_zap", "irq_sept_zap_storm", "variant:ignore_wait_for_sept_zap", 4),
    Row("zap_stuck", "irq_sept_zap_storm", "variant:no_outside_ack", 1),
)


def simulation(scenario: str, wrong: str | None = None) -> Simulation:
    """The shipped scenario with one strategy, and `wrong` (else the correct configuration:
    current, checked, no variant)."""
    overrides = {"kvm.compare": [], "kvm.host_state": "current", "kvm.exit_reason": "checked"}
    variants: list[str] = []
    if wrong is not None:
        kind, name = wrong.split(":")
        if kind == "strategy":
            builtin = name in ("v6.16", "eager")
            overrides["kvm.host_state"] = name if builtin else f"{WRONG}:{name}"
        elif kind == "variant":
            variants.append(name)
        else:
            overrides["kvm.exit_reason"] = name
    return Simulation(load_scenario(SCENARIOS / f"{scenario}.toml", overrides),
                      variants=variants)


@cache
def correct_violations(scenario: str) -> list[dict]:
    """The violations of the correct configuration that the scenario does not present as a
    finding about the kernel itself (its ``[expect] violations_must``, e.g. the stale exit
    fields re-handled after a ``wait_for_sept_zap`` return)."""
    with open(SCENARIOS / f"{scenario}.toml", "rb") as f:
        presented = set(tomllib.load(f).get("expect", {}).get("violations_must", []))
    return [v for v in simulation(scenario).run().violations
            if v["invariant"] not in presented]


def test_every_finding_has_a_row():
    """The table covers exactly the declared findings."""
    assert {row.finding for row in TABLE} == {f.name for f in FINDINGS}


def test_every_wrong_variant_is_caught_somewhere():
    """Every model switch and every wrong strategy has a row (one that nothing catches
    would be a switch that proves nothing)."""
    used = {row.wrong for row in TABLE}
    assert {f"variant:{name}" for name in VARIANTS} <= used
    strategies = {name for name, obj in vars(tests.wrong_strategies).items()
                  if isinstance(obj, type) and obj.__module__ == tests.wrong_strategies.__name__}
    assert {f"strategy:{name}" for name in strategies} <= used


@pytest.mark.parametrize("row", TABLE, ids=str)
def test_the_wrong_variant_is_caught_and_the_correct_model_is_quiet(row):
    """The finding fires exactly `count` times under the wrong variant; the correct
    configuration of the same shipped scenario records none beyond the findings the scenario
    presents."""
    sim = simulation(row.scenario, row.wrong)
    if row.raises is None:
        sim.run()
    else:
        with pytest.raises(row.raises):
            sim.run()
    assert sim.findings.counts[row.finding] == row.count
    assert correct_violations(row.scenario) == []
