"""The studies shipped in studies/ are valid study files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tdsim.study.spec import load_study

STUDIES = sorted((Path(__file__).parent.parent / "studies").glob("*.toml"))


def test_studies_are_shipped():
    """The four mission studies exist."""
    assert {p.stem for p in STUDIES} >= {
        "reload_vs_abort_rate", "reload_vs_userspace_fraction", "reload_vs_host_contention",
        "verdict_matrix"}


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_shipped_study_is_valid_and_compares_all_strategies(path):
    """Each parses, states its question and compares the three built-in strategies."""
    study = load_study(path)
    assert study.question.endswith("?")
    assert study.strategies == ("current", "v6.16", "eager")
    assert study.points()
