"""Cost uncertainty: where a conclusion holds over the plausible costs and which costs decide
it; and the Latin hypercube and PRCC underneath."""

from __future__ import annotations

import csv
import random

import pytest
from study_fakes import cost_runner, resolve, write_study

from tdsim.study.costs import cost_ranges, latin_hypercube, uncertain_costs
from tdsim.study.runner import run_study
from tdsim.study.sensitivity import analyse, prcc
from tdsim.study.spec import load_study

STUDY = """
question = "Does eager cost more KVM time than current, whatever the costs?"
scenario = "base.toml"
strategies = ["current", "eager"]
metrics = ["cpu.*.ns.kvm/exits", "wrmsr.total/exits"]
min_effect = 0.05
[uncertainty]
costs = ["wrmsr_ns", "exit_handling_ns", "vmm_io_ns"]
samples = 40
[replications]
count = 3
"""


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unc")
    study = load_study(write_study(tmp, STUDY))
    return run_study(study, tmp / "out", run_one=cost_runner, resolver=resolve, plots=False)


def test_every_cost_declares_a_status_and_a_plausible_range_around_its_default():
    """The schema's costs all carry [status; plausible low-high ns], default inside."""
    ranges = cost_ranges()
    assert len(ranges) >= 40
    for c in ranges.values():
        assert c.status in ("source", "estimate", "placeholder")
        assert c.low <= c.default <= c.high
    assert set(uncertain_costs()) <= set(ranges)


def test_latin_hypercube_uses_each_stratum_once_and_is_deterministic():
    """Per range, the K samples fall one in each of K equal strata; same seed, same rows."""
    rows = latin_hypercube([(0, 1000), (100, 200)], 10, seed=3)
    assert rows == latin_hypercube([(0, 1000), (100, 200)], 10, seed=3)
    assert rows != latin_hypercube([(0, 1000), (100, 200)], 10, seed=4)
    assert sorted(min(9, r[0] // 100) for r in rows) == list(range(10))
    assert sorted(min(9, (r[1] - 100) // 10) for r in rows) == list(range(10))


def test_prcc_finds_a_monotone_effect_and_ignores_an_inert_cost():
    """y = 2 x1 - x2 + noise: PRCC near +1 for x1, near -1 for x2, near 0 for x3."""
    rng = random.Random(5)
    xs = [(rng.random(), rng.random(), rng.random()) for _ in range(60)]
    y = [2 * a - b + rng.gauss(0, 0.05) for a, b, _ in xs]
    p1, p2, p3 = prcc(xs, y)
    assert p1 > 0.95
    assert p2 < -0.9
    assert abs(p3) < 0.3


def test_conclusion_share_and_deciding_costs(result):
    """eager's extra KVM time per exit (~9% at nominal costs) matters at 5% only where
    wrmsr_ns is high relative to exit_handling_ns: it holds in part of the cost space, and
    those two costs, not vmm_io_ns, decide it.  The WRMSR count holds everywhere."""
    a = analyse(result.summary)
    by_metric = {c.nominal.metric: c for c in a.conclusions}
    kvm = by_metric["cpu.*.ns.kvm/exits"]
    assert kvm.nominal.verdict == "material"
    assert 0.1 < kvm.share < 0.95
    top = dict(kvm.top_costs(2))
    assert set(top) == {"wrmsr_ns", "exit_handling_ns"}
    assert top["wrmsr_ns"] > 0.5
    assert top["exit_handling_ns"] < -0.5
    assert abs(kvm.prcc["vmm_io_ns"]) < 0.4
    count = by_metric["wrmsr.total/exits"]
    assert (count.share, count.top_costs()) == (1.0, [])


def test_report_and_csv_state_where_it_holds(result, tmp_path_factory):
    """The Answer has the cost-uncertainty headline; uncertainty.csv has every sample."""
    out = result.files[0].parent
    report = (out / "report.md").read_text()
    answer = report.split("## Answer")[1].split("## Method")[0]
    assert "**Cost uncertainty.** Over 40 Latin hypercube samples of 3 uncertain costs, " \
           "1 of 2 conclusions hold in every sample. The others:" in answer
    line = next(x for x in answer.splitlines() if x.startswith('- "eager'))
    assert "of the cost space; it depends most on `" in line
    assert "`wrmsr_ns` (+" in line
    assert "`exit_handling_ns` (\u2212" in line
    with (out / "uncertainty.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 40
    assert {"wrmsr_ns", "exit_handling_ns", "vmm_io_ns", "holds"} <= set(rows[0])


def test_tables_show_the_nominal_costs_only(result):
    """The per-metric tables list the design points at the nominal costs, not 41 levels."""
    report = (result.files[0].parent / "report.md").read_text()
    section = report.split("## WRMSRs per TD / VM exit")[1].split("## ")[0]
    assert section.count("| (base scenario) |") == 2  # the means row and the difference row
