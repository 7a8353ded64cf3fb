"""Whole runs: determinism, the result document, stream independence."""

import json
import subprocess
import sys

from tdsim.scenario import load_scenario, scenario_from_dict
from tdsim.sim import run

BASELINE = "scenarios/baseline.toml"


def test_same_seed_same_metrics_and_violations():
    """Two runs of one scenario and seed give identical metrics and violations."""
    a = run(load_scenario(BASELINE))
    b = run(load_scenario(BASELINE))
    assert a.metrics == b.metrics
    assert a.violations == b.violations


def test_same_metrics_in_another_process():
    """A run in a fresh interpreter (other hash seed) gives the same metrics."""
    code = ("import json,tdsim;"
            "r=tdsim.run(tdsim.load_scenario('scenarios/baseline.toml'));"
            "print(json.dumps(r.metrics,sort_keys=True))")
    env = {"PYTHONHASHSEED": "12345", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=".")
    here = run(load_scenario(BASELINE)).metrics
    assert json.loads(out.stdout) == json.loads(json.dumps(here, sort_keys=True))


def test_other_seed_other_metrics():
    """A different seed changes the trajectory (the seed is really used)."""
    a = run(load_scenario(BASELINE)).metrics
    b = run(load_scenario(BASELINE, overrides=["sim.seed=2"])).metrics
    assert a["exits"] != b["exits"] or a["wrmsr.total"] != b["wrmsr.total"]


def test_result_document_keys():
    """to_dict() has the documented keys, and the scenario in it is the resolved one."""
    r = run(load_scenario(BASELINE))
    doc = r.to_dict()
    assert set(doc) == {"tdsim_version", "scenario", "seed", "metrics", "violations", "perf"}
    assert doc["scenario"]["costs"]["wrmsr_ns"] == 35
    assert set(doc["perf"]) == {"wall_s", "cpu_s", "sim_events", "td_exits",
                                "events_per_td_exit", "td_exits_per_s", "compiled"}
    assert doc["perf"]["compiled"] is False  # the suite runs pure Python (conftest.py)
    json.dumps(doc)


def test_guest_behaviour_is_common_across_strategies():
    """Strategies differ in host work only: with a CPUID-only pinned vCPU and no contention,
    the TDVMCALL sequence and counts are the same under every strategy at equal costs."""
    def scenario(strategy):
        return scenario_from_dict({
            "sim": {"duration_us": 500, "seed": 9},
            "host": {"cpus": 2, "tick_hz": 0},
            "kvm": {"host_state": strategy},
            "costs": {"wrmsr_ns": 0},
            "vm": [{"vcpus": 1, "pin": [1], "workload": {
                "mix": {"cpuid": 1, "rdmsr": 1, "wrmsr": 1}}}],
        }, name="<crn>")
    counts = [{k: v for k, v in run(scenario(s)).metrics.items() if k.startswith("tdvmcall.")}
              for s in ("current", "v6.16", "eager")]
    assert counts[0] == counts[1] == counts[2]
    assert sum(counts[0].values()) > 10


def test_shipped_strategies_have_no_violations_on_shipped_scenarios():
    """current, v6.16 and eager record no violation on the baseline scenario."""
    for strategy in ("current", "v6.16", "eager"):
        r = run(load_scenario(BASELINE, overrides=[f"kvm.host_state={strategy}"]))
        assert r.violations == [], strategy


def test_warmup_excludes_its_events_from_metrics():
    """With a warm-up, counters cover only the rest of the run and CPU time sums to it."""
    full = run(load_scenario(BASELINE)).metrics
    warm = run(load_scenario(BASELINE, overrides=["sim.warmup_us=5000"])).metrics
    assert warm["sim.measured_ns"] == 15_000_000
    for cpu in range(8):
        assert sum(warm[f"cpu.{cpu}.ns.{k}"]
                   for k in ("guest", "kvm", "vmm", "host_task", "idle")) == 15_000_000
    # The warm-up changes what is counted, not the trajectory: the first 5 ms run on its own
    # plus the measured part make up the whole run.
    first = run(load_scenario(BASELINE, overrides=["sim.duration_us=5000"])).metrics
    for key in ("exits", "host_state_reload", "wrmsr.total", "tdvmcall.cpuid"):
        assert first[key] + warm[key] == full[key], key
