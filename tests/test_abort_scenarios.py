"""The shipped abort scenarios show the aborts their headers state (their verdicts per strategy
are in their [expect] tables)."""

from pathlib import Path

import pytest

from tdsim.scenario import load_scenario
from tdsim.sim import run

SCENARIOS = Path(__file__).parents[1] / "scenarios"

# The verdict of each abort scenario per strategy (which oracles fire, and how often) is its
# [expect] table, checked by tests/test_expect.py like every shipped scenario's.


def test_abort_family_scenarios_show_their_aborts():
    """Each abort-family scenario makes its abort happen (late_abort.<kind> > 0)."""
    kinds = {
        "aborts_request_processing": ["request_exit", "mmu_reload_fail"],
        "aborts_late_check": ["kick", "request", "signal", "need_resched", "notify_resume"],
        "aborts_sept_zap": ["wait_for_sept_zap"],
        "aborts_module_refusals": ["operand_busy"],
        "aborts_zero_step": ["zero_step"],
        "aborts_fatal_exits": ["failed_vmentry", "sw_error", "vm_dead"],
    }
    for name, ks in kinds.items():
        m = run(load_scenario(SCENARIOS / f"{name}.toml")).metrics
        for k in ks:
            assert m.get(f"late_abort.{k}", 0) > 0, (name, k)


@pytest.mark.parametrize(("exit_reason", "expected"), [
    # (the NMI check needs is_nmi(R9) and R9 is zero: no spurious NMI; low bits 1 are a
    # KVM_BUG in handle_external_interrupt_irqoff, not a handled interrupt)
    ("raw", {"error_status_dispatched", "tdvmcall_completion"}),
    ("checked", set()),
])
def test_exit_reason_study(exit_reason, expected):
    """exit_reason_raw.toml: raw misreads error statuses; checked reports them as errors."""
    r = run(load_scenario(SCENARIOS / "exit_reason_raw.toml",
                          {"kvm.exit_reason": exit_reason}))
    assert {v["invariant"] for v in r.violations} == expected
