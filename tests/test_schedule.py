"""The scripted schedule as scenario input (tdsim.schedule): its declarations, its checks and
its round trip through a scenario."""

from pathlib import Path

import pytest

from tdsim.config import from_data
from tdsim.faults import FAULT_KNOBS
from tdsim.scenario import ScenarioError, scenario_from_dict
from tdsim.schedule import EVENT_KINDS, KINDS, Event, Period, Schedule
from tdsim.schedule import from_data as schedule_from_data

DOCS = Path(__file__).parents[1] / "docs" / "hunt.md"


def scenario(schedule, **extra):
    return scenario_from_dict({
        "host": {"cpus": 2, "tick_hz": 0},
        "vm": [{"vcpus": 2, "workload": {"mix": {"cpuid": 1.0}}},
               {"name": "vmx0", "flavor": "vmx", "vcpus": 1}],
        "schedule": schedule, **extra}, name="s.toml")


def test_every_fault_knob_is_an_event_kind():
    """Each [faults] knob (its name, without _hz) can be scheduled as an event."""
    assert {k.name for k in FAULT_KNOBS} <= set(KINDS)


def test_every_event_kind_is_documented():
    """docs/hunt.md lists every kind of injected event."""
    text = DOCS.read_text()
    for kind in EVENT_KINDS:
        assert f"`{kind.name}`" in text


def test_a_schedule_round_trips_through_a_scenario():
    """Events and guest lists come back from the resolved scenario as they were written."""
    written = Schedule(
        (Event("operand_busy", "td0.vcpu1", 2, detail=0xA9),
         Event("signal", "td0.vcpu0", 0, "exit", 500),
         Event("host_nmi", t_ns=1234, cpu=1)),
        {"td0.vcpu0": (Period("cpuid"), Period("io", 2500))})
    got = schedule_from_data(from_data(scenario(written.to_data()).data).schedule)
    assert got == written


@pytest.mark.parametrize(("event", "where", "message"), [
    ({"kind": "sigal", "vcpu": "td0.vcpu0", "entry": 0, "at": "exit"},
     "schedule.event[0].kind", '"sigal" is not one of'),
    ({"kind": "signal", "vcpu": "td0.vcpu5", "entry": 0, "at": "exit"},
     "schedule.event[0].vcpu", "no vCPU 'td0.vcpu5' (did you mean 'td0.vcpu1'?)"),
    ({"kind": "signal", "vcpu": "td0.vcpu0", "entry": 0},
     "schedule.event[0].at", "which landmark of the entry"),
    ({"kind": "signal", "vcpu": "td0.vcpu0", "entry": 0, "at": "exit", "t_ns": 5},
     "schedule.event[0]", "give either entry (with at) or t_ns"),
    ({"kind": "operand_busy", "vcpu": "td0.vcpu0", "entry": 0, "at": "exit"},
     "schedule.event[0].at", "operand_busy lands on its TDH.VP.ENTER"),
    ({"kind": "zero_step", "vcpu": "vmx0.vcpu0", "entry": 0},
     "schedule.event[0].kind", "zero_step needs a TD vCPU"),
    ({"kind": "signal", "vcpu": "td0.vcpu0", "entry": 0, "at": "exit", "detail": 1},
     "schedule.event[0].detail", "signal has no detail"),
    ({"kind": "nmi", "cpu": 1, "t_ns": 10}, "schedule.event[0].cpu",
     "only host_irq and host_nmi"),
    ({"kind": "zero_step", "vcpu": "td0.vcpu0", "t_ns": 10}, "schedule.event[0].t_ns",
     "place it with entry"),
])
def test_a_bad_event_is_one_line_naming_its_key(event, where, message):
    """A misplaced or misspelt event is bad input naming the event's key path."""
    with pytest.raises(ScenarioError) as e:
        scenario({"event": [event]})
    assert str(e.value).startswith(f"s.toml: {where}: ")
    assert message in str(e.value)


@pytest.mark.parametrize(("guest", "message"), [
    ({"td0.vcpu9": ["cpuid"]}, "no vCPU 'td0.vcpu9'"),
    ({"td0.vcpu0": ["cpuid", "iox"]}, "item 1: 'iox' is not a TDVMCALL kind"),
    ({"td0.vcpu0": [{"call": "io", "us": 3}]}, "a table needs `call` and may have"),
    ({"td0.vcpu0": []}, "needs at least one call"),
    ({"td0.vcpu0": ["hlt"]}, "a halted vCPU could never be woken"),
])
def test_a_bad_guest_list_is_bad_input(guest, message):
    """A guest list names an existing vCPU and TDVMCALL kinds, halting only with a timer."""
    with pytest.raises(ScenarioError, match=r"schedule\.guest") as e:
        scenario({"guest": guest})
    assert message in str(e.value)


def test_a_scenario_without_a_schedule_has_an_empty_one():
    """No [schedule]: nothing is scripted and the random sources run."""
    sched = schedule_from_data(from_data(scenario_from_dict({}).data).schedule)
    assert not sched
    assert sched.random_sources
