"""Reproducers written by ``tdsim hunt`` and kept in scenarios/found/ (docs/hunt.md): each
still breaks its oracle (its [expect]) with the few scripted events it names."""

from pathlib import Path

import pytest

from tdsim.expect import check_scenario
from tdsim.scenario import load_scenario

FOUND = sorted((Path(__file__).parents[1] / "scenarios" / "found").glob("*.toml"))


def test_there_are_kept_reproducers():
    """At least the v6.16 reproducer of the README is kept."""
    assert any(p.name == "v616_refused_entry_then_signal.toml" for p in FOUND)


@pytest.mark.parametrize("path", FOUND, ids=[p.name for p in FOUND])
def test_a_kept_reproducer_still_breaks_its_oracle(path):
    """It starts with its question, scripts at most a handful of events, and meets its
    [expect] (the oracle it was found to break)."""
    assert path.read_text().startswith("# Question: ")
    scenario = load_scenario(path)
    assert len(scenario.data["schedule"]["event"]) <= 5
    assert scenario.data["expect"]["violations_must"]
    report = check_scenario(scenario)
    assert report.ok, report.render()
