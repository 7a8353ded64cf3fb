"""Recording a run's random decisions and replaying them (the runner's side of
`tdsim.choices`).

`record` runs a scenario with a recording `tdsim.choices.Runtime` at its choice points: each
guest period's call and compute time, each TDH.VP.ENTER outcome and failed
``kvm_mmu_reload``, each arrival of a fault or interrupt source (placed by the latest
landmark of its vCPU before it) are written down as a `tdsim.schedule.Schedule`.  `replay`
is the scenario with that schedule and its own random sources of injected events off: its
run makes the recorded decisions, with the same metrics and violations (docs/hunt.md).
"""

from __future__ import annotations

from .choices import Runtime
from .scenario import Scenario
from .schedule import Schedule
from .sim import Result, Simulation


def record(scenario: Scenario) -> tuple[Result, Schedule]:
    """Run `scenario` and write down every decision its fault and interrupt sources, module
    outcomes, failed reloads and statistical guests made, as a schedule (`replay`)."""
    runtime = Runtime(record=True)
    result = Simulation(scenario, choices=runtime).run()
    return result, runtime.recorded()


def replay(scenario: Scenario, schedule: Schedule) -> Scenario:
    """`scenario` with `schedule` (from `record`) as its ``[schedule]``: the scenario's own
    random sources of injected events are off, so the run makes the recorded decisions."""
    data = schedule.to_data()
    data.setdefault("event", [])
    data.setdefault("guest", {})
    data["random_sources"] = False
    return scenario.replace({"schedule": data})
