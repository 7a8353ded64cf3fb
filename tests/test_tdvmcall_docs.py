"""docs/tdvmcall.md stays in step with the declarations it documents."""

import re
from pathlib import Path

from tdsim.tdvmcall import LEAVES
from tdsim.tdvmcall_abi import GENERATIONS

DOC = Path(__file__).resolve().parents[1] / "docs" / "tdvmcall.md"


def test_every_declared_leaf_has_a_row():
    """Each leaf of tdvmcall.LEAVES appears in the sub-function table with its number."""
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ")]
    for leaf in LEAVES:
        number = str(leaf.number) if leaf.number < 0x10000 else f"{leaf.number:#x}"
        assert any(line.startswith(f"| {leaf.name} {number}") for line in rows), leaf.name


def test_every_generation_is_described():
    """Each value of [kvm] tdvmcall_abi has a row in the generations table."""
    text = DOC.read_text()
    for name in GENERATIONS:
        assert f'| `"{name}"`' in text, name


def test_every_test_the_doc_names_exists():
    """A test named in the doc is a test of the suite (no stale references)."""
    names = set(re.findall(r"`(test_[a-z0-9_]+)", DOC.read_text()))
    defined = set()
    for path in DOC.parents[1].joinpath("tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_[a-z0-9_]+)", path.read_text(), re.M))
    prefixes = {n for n in names if n not in defined}
    missing = [n for n in prefixes if not any(d.startswith(n.rstrip("_")) for d in defined)]
    assert missing == []
