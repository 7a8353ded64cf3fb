"""Studies on the real model: CI coverage of a known expectation, common random numbers,
identical rows across executors, and the shipped studies' design points resolving."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdsim.study.checks import resolve_points
from tdsim.study.execute import InProcessExecutor, LocalExecutor
from tdsim.study.runner import run_study
from tdsim.study.spec import load_study

# One vCPU alone on one CPU, no ticks, no host tasks, fixed compute time, and CPUID and
# RDMSR handled at the same cost: every run issues the same number N of TDVMCALLs whatever
# the seed or strategy, and each is CPUID with probability 1/2 independently, so
# tdvmcall.cpuid ~ Binomial(N, 1/2) and its expectation is exactly N / 2.
KNOWN_MEAN_SCENARIO = """
# Question: none; a test fixture whose tdvmcall.cpuid has a known expectation (N / 2).
[sim]
duration_us = 2000
[host]
cpus = 1
tick_hz = 0
[[vm]]
vcpus = 1
[vm.workload]
compute_us = 20
compute_dist = "fixed"
mix = { cpuid = 1, rdmsr = 1 }
[costs]
tdvmcall_cpuid_ns = 300
tdvmcall_msr_ns = 300
"""

STUDY = """
question = "Does the CI of tdvmcall.cpuid cover N / 2?"
scenario = "known.toml"
strategies = ["current", "eager"]
metrics = ["tdvmcall.cpuid", "exits", "wrmsr.total"]
seed = {seed}
[replications]
count = {count}
"""

REPETITIONS = 200
REPLICATIONS = 5


def _study(tmp_path: Path, seed: int, count: int):
    (tmp_path / "known.toml").write_text(KNOWN_MEAN_SCENARIO)
    path = tmp_path / f"study{seed}.toml"
    path.write_text(STUDY.format(seed=seed, count=count))
    return load_study(path)


def _tdvmcall_totals(tmp_path: Path) -> set[int]:
    result = run_study(_study(tmp_path, 1, 6), tmp_path / "premise", write_outputs=False)
    return {r["metrics"]["tdvmcall.cpuid"] + r["metrics"]["tdvmcall.rdmsr"]
            for r in result.rows}


def test_tdvmcall_total_is_the_same_in_every_run(tmp_path):
    """The premise of the coverage test: N does not depend on seed or strategy."""
    (n,) = _tdvmcall_totals(tmp_path)
    assert n > 50


def test_strategies_see_the_same_guest_behaviour(tmp_path):
    """Common random numbers: per replication, both strategies draw the same TDVMCALLs, so
    the paired difference in tdvmcall.cpuid is exactly zero while WRMSRs differ."""
    s = run_study(_study(tmp_path, 1, 4), tmp_path / "out", write_outputs=False).summary
    cpuid = s.paired[(0, "eager", "tdvmcall.cpuid")]
    assert (cpuid.n, cpuid.mean, cpuid.halfwidth) == (4, 0.0, 0.0)
    assert s.paired[(0, "eager", "wrmsr.total")].mean != 0


def test_ci_covers_the_known_expectation_about_95_percent(tmp_path):
    """200 studies of 5 replications: the 95% CI of tdvmcall.cpuid covers N/2 in
    Binomial(200, 0.95) of them if the intervals are right, so 180-198 (0.90-0.99)."""
    (n,) = _tdvmcall_totals(tmp_path)
    hits = 0
    for k in range(REPETITIONS):
        study = _study(tmp_path, 1 + k, REPLICATIONS)  # hashed seeds: disjoint
        summary = run_study(study, tmp_path / f"out{k}", write_outputs=False).summary
        hits += summary.cells[(0, "current", "tdvmcall.cpuid")].covers(n / 2)
    assert 0.90 * REPETITIONS <= hits <= 0.99 * REPETITIONS, hits


def test_process_pool_rows_equal_in_process_rows_on_the_model(tmp_path):
    """The real model gives identical rows in-process and on two worker processes."""
    def rows(name, executor):
        result = run_study(_study(tmp_path, 7, 3), tmp_path / name, executor=executor,
                           write_outputs=False)
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in result.rows]

    assert rows("a", InProcessExecutor()) == rows("b", LocalExecutor(2))


STUDIES = Path(__file__).parent.parent / "studies"


@pytest.mark.parametrize("name", ["reload_vs_userspace_fraction", "reload_vs_host_contention"])
def test_shipped_study_points_resolve_on_the_model(name):
    """Every design point of the studies that need only the foundation model resolves."""
    study = load_study(STUDIES / f"{name}.toml")
    assert len(resolve_points(study)) == len(study.points())


def test_resolving_once_per_point_equals_loading_every_run(tmp_path):
    """The runner resolves a point once and sets each replication's seed in a copy: the
    same data the scenario loader gives for that seed, and an edited file is re-read."""
    from tdsim.scenario import load_scenario
    from tdsim.study.runner import resolve_scenario, run_overrides

    study = _study(tmp_path, 3, 2)
    point = study.points()[0]
    for rep in range(3):
        ov = run_overrides(study, point, "eager", rep)
        assert resolve_scenario(study, ov) == load_scenario(study.scenario_path, ov).data
    text = (tmp_path / "known.toml").read_text()
    (tmp_path / "known.toml").write_text(text.replace("duration_us = 2000",
                                                      "duration_us = 3000"))
    ov = run_overrides(study, point, "eager", 0)
    assert resolve_scenario(study, ov)["sim"]["duration_us"] == 3000
