"""The shipped abort scenarios deliver the verdicts their headers state, per strategy."""

from pathlib import Path

import pytest

from tdsim.scenario import load_scenario
from tdsim.sim import run

SCENARIOS = Path(__file__).parents[1] / "scenarios"

# scenario -> strategy -> the set of oracles expected to fire (empty = clean)
VERDICTS = {
    "aborts_request_processing": {"current": set(), "v6.16": set(), "eager": set()},
    "aborts_late_check": {"current": set(), "v6.16": set(), "eager": set()},
    "aborts_sept_zap": {"current": set(), "v6.16": set(), "eager": set()},
    "aborts_module_refusals": {"current": set(), "v6.16": {"uret_cache_mismatch"},
                               "eager": set()},
    "aborts_zero_step": {"current": set(), "v6.16": {"uret_cache_mismatch"}, "eager": set()},
    "aborts_refusal_preempt": {"current": set(), "v6.16": {"uret_cache_mismatch"},
                               "eager": set()},
    "aborts_fatal_exits": {"current": set(), "v6.16": set(), "eager": set()},
    "aborts_cost_without": {"current": set(), "v6.16": set(), "eager": set()},
    "aborts_cost_with": {"current": set(), "v6.16": set(), "eager": set()},
    "mixed_td_vmx": {"current": set(),
                     "v6.16": {"uret_cache_mismatch", "guest_msr_corruption"},
                     "eager": {"uret_cache_mismatch", "guest_msr_corruption"}},
}


@pytest.mark.parametrize("name", sorted(VERDICTS))
def test_abort_scenario_verdicts(name):
    """Each strategy produces exactly the violations the scenario header announces."""
    for strategy, expected in VERDICTS[name].items():
        r = run(load_scenario(SCENARIOS / f"{name}.toml", {"kvm.host_state": strategy}))
        assert {v["invariant"] for v in r.violations} == expected, strategy


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
    ("raw", {"spurious_nmi", "spurious_external_interrupt", "error_status_dispatched",
             "tdvmcall_completion"}),
    ("checked", set()),
])
def test_exit_reason_study(exit_reason, expected):
    """exit_reason_raw.toml: raw misreads error statuses; checked reports them as errors."""
    r = run(load_scenario(SCENARIOS / "exit_reason_raw.toml",
                          {"kvm.exit_reason": exit_reason}))
    assert {v["invariant"] for v in r.violations} == expected
