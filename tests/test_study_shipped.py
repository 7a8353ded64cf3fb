"""The studies shipped in studies/ are valid study files that ask a comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdsim.study.checks import resolve_points
from tdsim.study.spec import load_study

STUDIES = sorted((Path(__file__).parent.parent / "studies").glob("*.toml"))


def test_studies_are_shipped():
    """The mission studies and the cost-uncertainty study exist."""
    assert {p.stem for p in STUDIES} >= {
        "reload_vs_abort_rate", "reload_vs_userspace_fraction", "reload_vs_host_contention",
        "verdict_matrix", "regs_layout", "strategy_cost_uncertainty"}


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_shipped_study_is_valid_and_compares_something(path):
    """Each parses, states its question, and compares the three built-in strategies or
    declares the factor it compares."""
    study = load_study(path)
    assert study.question.endswith("?")
    assert study.comparisons
    assert study.strategies == ("current", "v6.16", "eager") or all(
        c.dimension is not None for c in study.comparisons)
    assert study.points()


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_shipped_study_resolves_on_the_model(path):
    """Every design point, level and strategy of every shipped study is accepted by the
    model's scenario loader (what `tdsim study` checks before any run)."""
    study = load_study(path)
    assert len(resolve_points(study)) == len(study.points())


def test_register_layout_study_asks_copy_minus_in_place():
    """The register-layout study's comparison is the layouts, copy - in_place."""
    study = load_study(Path(__file__).parent.parent / "studies" / "regs_layout.toml")
    (comp,) = study.comparisons
    dim = study.dimensions[comp.dimension]
    assert dim.keys == ("kvm.regs_layout",)
    assert dim.level_label(comp.baseline_level) == "in_place"
    assert [dim.level_label(i) for i in range(len(dim.levels))] == ["in_place", "copy"]


def test_sequential_shipped_studies_use_the_two_stage_procedure():
    """A shipped sequential study has a first stage of at least 10 and targets a quantity
    the study compares."""
    seq = [load_study(p) for p in STUDIES if load_study(p).replications.sequential]
    assert seq
    for study in seq:
        assert study.replications.min >= 10
        assert study.comparisons
