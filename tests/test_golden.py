"""The model against its golden snapshot (`tests/golden/snapshot.py`): metrics, violations
and event trajectory of fixed runs stay identical unless a commit changes them on purpose."""

import pytest

from tests.golden import snapshot

_OLD = snapshot.load()
_CASES = dict(snapshot.all_cases())


def _quick(cid: str) -> bool:
    """The default suite: every shipped scenario under `current` at its own seed (the first
    of its two seeds), and every fourth random scenario."""
    if cid.startswith("random/"):
        return int(cid.split("/")[1]) % 4 == 0
    return cid.startswith("bench/") or ("/current/" in cid and cid == _first_seed(cid))


def _first_seed(cid: str) -> str:
    stem = cid.split("/")[0]
    return min(c for c in _CASES if c.startswith(stem + "/current/"))


@pytest.mark.parametrize("cid", [c for c in _CASES if _quick(c)])
def test_golden_quick(cid):
    """This case's results are those in the snapshot."""
    assert snapshot.differences(_OLD[cid], snapshot.take(_CASES[cid])) == []


@pytest.mark.slow
@pytest.mark.parametrize("cid", [c for c in _CASES if not _quick(c)])
def test_golden_rest(cid):
    """This case's results are those in the snapshot."""
    assert snapshot.differences(_OLD[cid], snapshot.take(_CASES[cid])) == []


def test_snapshot_covers_every_case():
    """Every case has a snapshot (a new shipped scenario needs `--update`)."""
    assert sorted(_CASES) == sorted(_OLD)
