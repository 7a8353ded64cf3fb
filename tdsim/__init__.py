"""tdsim: a discrete-event model of Intel TDX guests under Linux KVM.

Public API (docs/api.md)::

    scenario = tdsim.load_scenario("scenarios/baseline.toml", overrides=["host.cpus=8"])
    result = tdsim.run(scenario)
    result.metrics["host_state_reload"], result.violations, result.to_dict()

The names are loaded on first use, so that ``import tdsim.cli`` (and ``tdsim --help``) does
not load the model.
"""

import os
from typing import TYPE_CHECKING, Any

from ._version import __version__

if __name__ == "tdsim" and os.environ.get("TDSIM_COMPILED", "0") != "0":
    # The optional compiled build of the hot modules (make compiled), only if it was built
    # from the current source; otherwise one line and exit status 2 (tdsim/_compiled.py).
    # (Not for a renamed copy of the package, such as tdsim.bench_trace's stripped one.)
    from ._compiled import activate_or_exit

    activate_or_exit(__path__)

__all__ = ["Result", "Scenario", "ScenarioError", "__version__", "load_scenario", "run"]

_WHERE = {"Scenario": "scenario", "ScenarioError": "scenario", "load_scenario": "scenario",
          "Result": "sim", "run": "sim"}

if TYPE_CHECKING:
    from .scenario import Scenario, ScenarioError, load_scenario
    from .sim import Result, run


def __getattr__(name: str) -> Any:
    """The public names, and the submodules (``tdsim.sim`` after a bare ``import tdsim``, as
    when this package imported them eagerly), loaded on first use."""
    from importlib import import_module
    from importlib.util import find_spec

    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
    elif not name.startswith("_") and find_spec(f"{__name__}.{name}") is not None:
        value = import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'tdsim' has no attribute {name!r}")
    globals()[name] = value
    return value
