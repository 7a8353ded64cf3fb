"""`tdsim.hunt`: the search finds what is wrong, shrinks it to a few events, and its
reproducer is an ordinary scenario that breaks the same oracle on its own.

Every hunt here is bounded by a number of runs (`max_runs`), not by wall-clock time, and
seeded: the same candidates on any machine (derandomized)."""

import statistics
from pathlib import Path

import pytest

from tdsim.expect import check_scenario
from tdsim.hunt import hunt
from tdsim.hunt_report import dumps, reproducer_text
from tdsim.scenario import ScenarioError, load_scenario, load_scenario_text
from tdsim.sim import run

ROOT = Path(__file__).parents[1]
WRONG = ROOT / "tests" / "wrong_strategies.py"
GENERIC = ROOT / "scenarios" / "aborts_cost_with.toml"  # every recoverable abort kind on
BUDGET = 600.0  # never reached: `max_runs` bounds these hunts


def hunted(path=GENERIC, strategy=None, max_runs=400, **kw):
    return hunt(load_scenario(path), strategy, budget_s=BUDGET, max_runs=max_runs, **kw)


def reproduces(result):
    """The reproducer, read back from its own text, breaks the oracle and meets [expect]."""
    scenario = load_scenario_text(reproducer_text(result, "tdsim hunt"), name="repro.toml")
    assert result.oracle in {v["invariant"] for v in run(scenario).violations}
    assert check_scenario(scenario).ok


def test_the_findings_a_scenario_declares_are_not_hunted_unless_asked():
    """aborts_cost_with.toml declares spurious_external_interrupt (its SEPT-zap spins, under
    every strategy): a hunt leaves it out, and finds it in one event when asked for it."""
    r = hunted(strategy="current", max_runs=50)
    assert "spurious_external_interrupt" not in r.oracles
    assert "uret_cache_mismatch" in r.oracles
    asked = hunted(strategy="current", oracles=["spurious_external_interrupt"])
    assert asked.oracle == "spurious_external_interrupt"
    assert [e.kind for e in asked.candidate.events] == ["sept_zap"]
    reproduces(asked)


def test_v616_breaks_the_user_return_cache_with_two_events():
    """v6.16 on the generic abort scenario: a refused entry and a signal, one vCPU."""
    r = hunted(strategy="v6.16")
    assert r.oracle == "uret_cache_mismatch"
    assert len(r.candidate.events) == 2
    assert {e.kind for e in r.candidate.events} & {"operand_busy", "zero_step"}
    assert sum(r.candidate.vcpus) == 1
    reproduces(r)
    assert "uret_cache_mismatch breaks" in r.explanation


@pytest.mark.parametrize(("strategy", "oracles", "most"), [
    ("SkipKgsRestoreWhenAborted", {"kernel_gs_base_not_restored", "host_state_leak"}, 2),
    ("CacheOnlyUret", {"uret_cache_mismatch"}, 1),
    ("NeverRestoreOnUserReturn", {"host_state_leak"}, 0),
])
def test_each_wrong_strategy_is_found(strategy, oracles, most):
    """Each deliberately wrong strategy of tests/wrong_strategies.py is caught within a few
    hundred runs, by its oracle, with at most `most` injected events."""
    r = hunted(strategy=f"{WRONG}:{strategy}")
    assert r.oracle in oracles
    assert len(r.candidate.events) <= most
    reproduces(r)


def test_current_survives_every_single_event_schedule():
    """current: no counterexample among all one-event schedules of 8 entries of one vCPU,
    and the whole space is covered."""
    r = hunt(load_scenario(GENERIC), "current", budget_s=BUDGET, mode="exhaustive", depth=1)
    assert not r.found
    assert r.space_done == r.space_total > 300
    kinds = {c[0] for c in r.cells}
    assert {"signal", "operand_busy", "zero_step", "migrate"} <= kinds
    assert "prepare_switch_to_host" in {c[2] for c in r.cells}


def test_the_same_seed_gives_the_same_reproducer():
    """A hunt bounded by runs is deterministic."""
    a = hunted(strategy="v6.16", seed=7)
    b = hunted(strategy="v6.16", seed=7)
    assert dumps(a.reproducer) == dumps(b.reproducer)
    assert a.runs == b.runs


def test_a_narrow_race_with_a_vmx_cotenant_is_found():
    """v6.16's TSC_AUX corruption of a VMX guest (one in 50 ms of random aborts) takes a
    few hundred runs and three events, one of them on the VMX vCPU."""
    r = hunted(ROOT / "scenarios" / "mixed_td_vmx.toml", "v6.16",
               oracles=["guest_msr_corruption"], max_runs=600)
    assert r.found
    assert len(r.candidate.events) <= 3
    assert any(e.vcpu.startswith("vmx0.") for e in r.candidate.events)
    reproduces(r)


@pytest.mark.parametrize(("variant", "scenario", "oracle"), [
    ("lost_wakeup", "irq_idle_timers", "stuck_halt"),
    ("no_outside_ack", "irq_sept_zap_storm", "zap_stuck"),
    ("ignore_wait_for_sept_zap", "irq_sept_zap_storm", "td_entry_during_zap"),
])
def test_wrong_kernel_variants_are_found(variant, scenario, oracle):
    """The deliberately wrong kernel variants are found too (reproducers need the variant)."""
    r = hunted(ROOT / "scenarios" / f"{scenario}.toml", "current", variants=[variant])
    assert r.oracle == oracle


def test_a_scripted_guest_leaves_nothing_to_search():
    """A scenario whose guests all run programs is bad input for a hunt."""
    with pytest.raises(ScenarioError, match="scripted program"):
        hunted(ROOT / "scenarios" / "ghci_every_subfunction.toml")


@pytest.mark.slow
def test_v616_time_to_find_over_seeds():
    """v6.16 from the generic abort scenario within 120 s, for each of 9 seeds; the
    median time to the reproducer is printed (docs/hunt.md quotes it)."""
    times = []
    for seed in range(1, 10):
        r = hunt(load_scenario(GENERIC), "v6.16", budget_s=120, seed=seed)
        assert r.oracle == "uret_cache_mismatch"
        assert len(r.candidate.events) <= 3
        times.append(r.elapsed_s)
    print(f"v6.16 found in {', '.join(f'{t:.2f}' for t in times)} s; "
          f"median {statistics.median(times):.2f} s")
