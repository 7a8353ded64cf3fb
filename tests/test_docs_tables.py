"""The docs tables agree with the declarations they document: every declared name is in its
table, and the table names nothing undeclared.  (docs/tdvmcall.md's other tables are held by
tests/test_tdvmcall_docs.py, docs/kernel-map.md by tests/test_kernel_map.py.)"""

import re
from pathlib import Path

from tdsim import metrics
from tdsim.faults import FAULT_KNOBS
from tdsim.findings import NAMES
from tdsim.schema import FAULTS
from tdsim.strategies import BUILTIN
from tdsim.study.costs import cost_ranges
from tdsim.tdvmcall import LEAVES
from tdsim.trace import EVENT_KINDS

ROOT = Path(__file__).resolve().parents[1]
CODE = re.compile(r"`([^`]+)`")


def table(doc: str, header: str) -> list[list[str]]:
    """The body rows (cells, stripped) of the table in `doc` whose header row starts with
    `header`; ``\\|`` inside a cell is kept as ``|``."""
    lines = (ROOT / doc).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        rows.append([c.strip().replace("\\|", "|") for c in cells])
    return rows


def names(cell: str) -> list[str]:
    """The code spans of a cell."""
    return CODE.findall(cell)


# --- metric families: README "Metrics are flat dotted keys" --------------------------------


def _segments(name: str) -> list[str]:
    """Dotted segments; a ``<...>`` placeholder is one segment even with dots inside."""
    return re.split(r"\.(?![^<]*>)", name)


def _variants(documented: str) -> list[str]:
    """A documented metric with an optional tail (``ipi.sent[.<pattern>]``) is two."""
    m = re.fullmatch(r"(.*)\[(\..*)\]", documented)
    return [m.group(1), m.group(1) + m.group(2)] if m else [documented]


def _family(documented: str) -> metrics.MetricFamily | None:
    """The declared family a documented metric stands for: a concrete name by
    `tdsim.metrics.family`, one with placeholders (``wrmsr.site.<prepare|put>``) by the family
    whose pattern has a placeholder in the same segments.  Where the doc spells out a closed
    placeholder's values, they must be the declared ones (else None)."""
    segs = _segments(documented)
    if not any("<" in seg for seg in segs):
        return metrics.family(documented)
    for fam in metrics.METRICS:
        pats = fam.pattern.split(".")
        if len(pats) != len(segs) or any(("<" in s) != p.startswith("{") or
                                          ("<" not in s and s != p)
                                          for s, p in zip(segs, pats, strict=True)):
            continue
        for seg, pat in zip(segs, pats, strict=True):
            alts = re.fullmatch(r"<(.*\|.*)>", seg)
            closed = metrics.PLACEHOLDERS.get(pat.strip("{}"))
            if alts and closed is not None and set(alts.group(1).split("|")) != set(closed):
                return None
        return fam
    return None


def _readme_metrics() -> list[str]:
    rows = table("README.md", "| key | meaning |")
    return [v for row in rows for n in names(row[0]) for v in _variants(n)]


def test_every_metric_family_is_in_the_readme_table():
    """Each family of tdsim.metrics.METRICS has a row in the README's metric table."""
    documented = {_family(name) for name in _readme_metrics()}
    missing = [f.pattern for f in metrics.METRICS if f not in documented]
    assert missing == []


def test_the_readme_metric_table_names_only_declared_families():
    """Each metric the README's table names belongs to a declared family, and where it
    spells out a placeholder's values (``<prepare|put|...>``) they are the declared ones."""
    assert [name for name in _readme_metrics() if _family(name) is None] == []


# --- findings: README "Invariants checked in every run" and the late-abort summary ----------


def test_the_readme_findings_table_lists_every_declared_finding():
    """The README's findings table names exactly tdsim.findings.FINDINGS."""
    rows = table("README.md", "| finding | what breaks it |")
    documented = [n for row in rows for n in names(row[0])]
    assert sorted(documented) == sorted(NAMES)


def test_the_oracles_of_the_readme_abort_summary_are_declared():
    """Each finding the README's late-abort summary names as watching a path is declared."""
    rows = table("README.md", "| path | knob(s) | oracle that watches it |")
    named = {w for row in rows for w in re.findall(r"[a-z_]+", re.sub(r"\(.*?\)", "", row[2]))}
    assert named
    assert named - NAMES == set()


# --- fault knobs: docs/late-aborts.md ------------------------------------------------------


def test_every_fault_knob_is_in_the_late_abort_table_under_its_path():
    """Each knob of tdsim.faults.FAULT_KNOBS appears in docs/late-aborts.md's table in a row
    of its abort path ("-" for an exit-status fault)."""
    rows = table("docs/late-aborts.md", "| Ref | Path | Knob |")
    missing = [k.key for k in FAULT_KNOBS
               if not any(row[0] == (k.path or "-") and k.key in names(row[2]) for row in rows)]
    assert missing == []


def test_the_late_abort_table_names_only_faults_keys():
    """Each code span of the table's knob column is a key of the [faults] schema table."""
    rows = table("docs/late-aborts.md", "| Ref | Path | Knob |")
    named = {n for row in rows for n in names(row[2])}
    assert named - set(FAULTS.keys) == set()


# --- TDVMCALL sub-functions: docs/tdvmcall.md ----------------------------------------------


def test_the_tdvmcall_leaf_table_names_only_declared_leaves():
    """Each row of docs/tdvmcall.md's sub-function table that names a leaf and a number
    names a leaf of tdsim.tdvmcall.LEAVES with that number (test_tdvmcall_docs checks the
    other way round)."""
    declared = {leaf.name: leaf.number for leaf in LEAVES}
    rows = table("docs/tdvmcall.md", "| leaf | kernel function")
    wrong = []
    for row in rows:
        m = re.match(r"(\S+) (0x[0-9a-f]+|\d+)\b", row[0])
        if m is None:
            continue  # "R10 != 0: KVM hypercall" is no GHCI leaf
        if declared.get(m.group(1)) != int(m.group(2), 0):
            wrong.append(row[0])
    assert wrong == []


# --- trace events: docs/api.md -------------------------------------------------------------


def test_the_event_table_matches_event_kinds():
    """docs/api.md lists exactly tdsim.trace.EVENT_KINDS, each with its declared fields."""
    rows = table("docs/api.md", "| kind | fields |")
    documented = {names(row[0])[0]: tuple(names(row[1])) for row in rows}
    assert documented == EVENT_KINDS


# --- strategies: docs/host-state.md --------------------------------------------------------


def test_the_strategy_table_has_a_column_per_builtin_strategy():
    """docs/host-state.md's hook table has one column per built-in strategy, in order."""
    text = (ROOT / "docs/host-state.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| hook |"))
    columns = [n for cell in header.strip("|").split("|")[2:] for n in names(cell)]
    assert columns == list(BUILTIN)


# --- costs: docs/costs.md ------------------------------------------------------------------


def test_the_cost_table_matches_the_schema():
    """docs/costs.md lists every cost with the default, status and plausible range its
    declaration in tdsim.schema.COSTS gives."""
    rows = table("docs/costs.md", "| cost | default ns |")
    documented = {names(row[0])[0]: (int(row[1].replace(",", "")), row[2],
                                     tuple(int(x.replace(",", "")) for x in row[3].split("-")))
                  for row in rows}
    declared = {c.name: (c.default, c.status, (c.low, c.high)) for c in cost_ranges().values()}
    assert documented == declared
