"""What a study asks about: declared comparisons, verdicts against min_effect, Holm, and the
answer in words at the top of the report."""

from __future__ import annotations

import csv

import pytest
from study_fakes import BASIC, crossing_runner, layout_runner, normal_runner, resolve, write_study

from tdsim.study.runner import run_study
from tdsim.study.spec import load_study
from tdsim.study.stats import Estimate
from tdsim.study.summary import verdict

LAYOUT = """
question = "What does the copy layout cost per exit?"
scenario = "base.toml"
strategies = ["current"]
metrics = ["regs.copies/exits", "cpu.4.ns.kvm/exits"]
compare = "kvm.regs_layout"
[factors]
"kvm.regs_layout" = ["in_place", "copy"]
[replications]
count = 5
"""


def run(body, tmp_path, runner, **kw):
    kw.setdefault("write_outputs", True)
    kw.setdefault("plots", False)  # the report's text is what these tests read
    study = load_study(write_study(tmp_path, body))
    return run_study(study, tmp_path / "out", run_one=runner, resolver=resolve, **kw)


def test_declared_factor_comparison_is_copy_minus_in_place(tmp_path):
    """compare = "kvm.regs_layout": one contrast per metric, copy - in_place, paired by
    replication: exactly +26 copies per exit."""
    result = run(LAYOUT, tmp_path, layout_runner)
    diffs = {d.metric: d for d in result.summary.differences}
    copies = diffs["regs.copies/exits"]
    assert (copies.contrast.treatment_name, copies.contrast.baseline_name) == ("copy",
                                                                                "in_place")
    assert (copies.diff.n, copies.diff.mean, copies.diff.halfwidth) == (5, 26.0, 0.0)
    assert copies.verdict == "material"
    assert diffs["cpu.4.ns.kvm/exits"].diff.covers(26.0)


def test_report_opens_with_the_answer_in_words(tmp_path):
    """The first section after the question is the answer: effect, interval, verdict."""
    run(LAYOUT, tmp_path, layout_runner)
    report = (tmp_path / "out" / "report.md").read_text()
    answer = report.split("## Answer")[1].split("## ")[0]
    assert report.index("## Answer") < report.index("## Method")
    assert ("- **GPR copies per TD / VM exit** [copies/exit], `copy` \u2212 `in_place`: +26 "
            "(exactly, in every replication), +1,040% relative; higher: a difference that "
            "matters") in answer


def test_sweep_sentence_gives_range_counts_and_sign_change(tmp_path):
    """Over a sweep the answer gives the range, verdict counts, and where the sign flips."""
    body = BASIC.replace('strategies = ["current", "v6.16", "eager"]',
                         'strategies = ["current", "eager"]').replace("count = 4", "count = 6")
    result = run(body, tmp_path, crossing_runner)
    answer = (tmp_path / "out" / "report.md").read_text().split("## Answer")[1]
    line = next(x for x in answer.splitlines() if x.startswith("- **WRMSRs**"))
    assert line.startswith("- **WRMSRs** [WRMSRs], `eager` \u2212 `current`: from \u2212")
    assert " relative at x=2 to +" in line
    assert " relative at x=0; " in line
    assert "matters at 2 of 3 (1 higher, 1 lower), negligible at 1" in line
    assert "the sign changes between x=0 and x=2" in line
    diffs = [d for d in result.summary.differences if d.metric == "wrmsr.total"]
    assert [d.verdict for d in diffs] == ["material", "negligible", "material"]


def test_min_effect_turns_a_real_but_small_difference_into_not_mattering(tmp_path):
    """v6.16 adds 3 WRMSRs on ~100 (3%): material at the default 1%, not with 5%."""
    body = BASIC.replace("count = 4", "count = 10")
    base = run(body, tmp_path, normal_runner, write_outputs=False).summary
    d = next(d for d in base.differences if d.metric == "wrmsr.total"
             and d.contrast.treatment[1] == "v6.16")
    assert d.verdict == "material"
    strict = run(body.replace("[factors]", "min_effect = 0.05\n[factors]"),
                 tmp_path / "b", normal_runner, write_outputs=False).summary
    d = next(d for d in strict.differences if d.metric == "wrmsr.total"
             and d.contrast.treatment[1] == "v6.16")
    assert d.verdict == "negligible"
    assert d.threshold == pytest.approx(0.05 * d.baseline.mean)


@pytest.mark.parametrize(
    ("mean", "halfwidth", "p_holm", "threshold", "expected"),
    [
        (5.0, 1.0, 0.001, 2.0, "material"),       # whole CI beyond +2
        (-5.0, 1.0, 0.001, 2.0, "material"),      # ... or below -2
        (2.5, 1.0, 0.001, 2.0, "detected"),       # significant, CI reaches under +2
        (5.0, 1.0, 0.2, 2.0, "inconclusive"),     # beyond, but not after Holm
        (0.3, 1.0, 0.5, 2.0, "negligible"),       # CI inside +-2
        (0.3, 3.0, 0.5, 2.0, "inconclusive"),     # CI too wide to tell
        (0.0, 0.0, 1.0, 0.0, "negligible"),       # exactly no difference
    ],
)
def test_verdict(mean, halfwidth, p_holm, threshold, expected):
    """Material needs Holm and the whole interval beyond the minimum effect; negligible
    needs the whole interval within it."""
    e = Estimate(10, mean, 1.0, halfwidth, 0.95)
    assert verdict(e, p_holm, threshold, 0.05) == expected


def test_holm_controls_the_marks_over_all_differences(tmp_path):
    """paired.csv has one Holm-adjusted p-value per difference, never below the raw one,
    and the family is every difference of the study."""
    run(BASIC, tmp_path, normal_runner)
    with (tmp_path / "out" / "paired.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * 3
    assert all(float(r["p_holm"]) >= float(r["p_value"]) for r in rows)
    raw = sorted(float(r["p_value"]) for r in rows)
    smallest = min(rows, key=lambda r: float(r["p_value"]))
    assert float(smallest["p_holm"]) == pytest.approx(min(1.0, raw[0] * len(rows)))


def test_ratio_estimator_is_named_and_selectable(tmp_path):
    """ratio_of_means = sum(a)/sum(b); mean_of_ratios averages a/b per run."""
    rows_of = {}
    for est in ("ratio_of_means", "mean_of_ratios"):
        body = BASIC.replace("[factors]", f'ratio = "{est}"\n[factors]')
        result = run(body, tmp_path / est, normal_runner, write_outputs=False)
        rows = [r for r in result.rows if r["point_index"] == 0 and r["strategy"] == "eager"]
        rows_of[est] = (result.summary.cells[(0, "eager", "wrmsr.total/exits")].mean, rows)
    mean, rows = rows_of["ratio_of_means"]
    assert mean == pytest.approx(sum(r["metrics"]["wrmsr.total"] for r in rows)
                                 / sum(r["metrics"]["exits"] for r in rows))
    mean, rows = rows_of["mean_of_ratios"]
    assert mean == pytest.approx(sum(r["metrics"]["wrmsr.total"] / r["metrics"]["exits"]
                                     for r in rows) / len(rows))
    assert rows_of["ratio_of_means"][0] != rows_of["mean_of_ratios"][0]
