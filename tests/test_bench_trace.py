"""The tracing-cost benchmark's floor: tdsim with every tracer check stripped."""

import importlib
import sys

from tdsim.bench_trace import NOCHECKS, build_nochecks
from tdsim.scenario import scenario_from_dict
from tdsim.sim import run

SMALL = {"sim": {"duration_us": 2000, "seed": 3}, "host": {"cpus": 2, "tasks": 1},
         "vm": [{"vcpus": 2, "workload": {"timer_hz": 1000, "mix": {"cpuid": 1, "io": 1,
                                                                     "hlt": 0.2}}}]}


def test_stripped_build_simulates_the_same_run(tmp_path):
    """The build without tracer checks has none left and gives the same metrics."""
    removed = build_nochecks(tmp_path)
    assert removed >= 10
    for path in (tmp_path / NOCHECKS).glob("*.py"):
        if path.name not in ("cli.py", "bench_trace.py", "trace.py"):
            assert "tracer is not None" not in path.read_text(), path.name
    sys.path.insert(0, str(tmp_path))
    try:
        stripped = importlib.import_module(f"{NOCHECKS}.sim")
        nc_scenario = importlib.import_module(f"{NOCHECKS}.scenario")
        got = stripped.run(nc_scenario.scenario_from_dict(SMALL)).metrics
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == NOCHECKS]:
            del sys.modules[name]
    assert got == run(scenario_from_dict(SMALL)).metrics
