"""tdsim: a discrete-event model of Intel TDX guests under Linux KVM.

Public API::

    scenario = tdsim.load_scenario("scenarios/baseline.toml", overrides=["host.cpus=8"])
    result = tdsim.run(scenario)
    result.metrics["host_state_reload"], result.violations, result.to_dict()
"""

from ._version import __version__
from .scenario import Scenario, ScenarioError, load_scenario
from .sim import Result, run

__all__ = ["Result", "Scenario", "ScenarioError", "__version__", "load_scenario", "run"]
