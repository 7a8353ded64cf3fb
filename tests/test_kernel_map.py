"""docs/kernel-map.md is the index of modelled kernel functions; it must match the code.

Each table row names a kernel function and where tdsim defines it (`module.py: Class.method` or
`module.py: function`).  The check parses every module of the package once, finds every
definition of each kernel name, and requires exactly one, at the place the table gives, with a
docstring (the docstring is where the simplification is spelled out).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAP = ROOT / "docs" / "kernel-map.md"
ROW = re.compile(r"^\|\s*`([A-Za-z_][\w]*)`\s*\|[^|]*\|\s*`([\w/]+\.py):\s*([\w.]+)`\s*\|")


def _rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in MAP.read_text().splitlines():
        m = ROW.match(line)
        if m:
            rows.append((m.group(1), m.group(2), m.group(3)))
    return rows


def _definitions() -> dict[str, list[tuple[str, str, bool]]]:
    """name -> [(module file, qualified name, has docstring)] over the whole package."""
    out: dict[str, list[tuple[str, str, bool]]] = {}
    for path in sorted((ROOT / "tdsim").rglob("*.py")):
        rel = path.relative_to(ROOT / "tdsim").as_posix()
        tree = ast.parse(path.read_text(), str(path))

        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.ClassDef):
                    stack.append((child, prefix + child.name + "."))
                elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    has_doc = ast.get_docstring(child) is not None
                    out.setdefault(child.name, []).append((rel, prefix + child.name, has_doc))
    return out


ROWS = _rows()
DEFS = _definitions()


def test_the_map_has_rows() -> None:
    # The table covers the run loop, the TDX vendor code, the module and the GHCI handlers;
    # a parse that finds a handful means the row format changed under the regex.
    assert len(ROWS) >= 60, len(ROWS)
    names = [r[0] for r in ROWS]
    assert len(names) == len(set(names)), "a kernel function listed twice"


@pytest.mark.parametrize(("name", "module", "where"), ROWS, ids=[r[0] for r in ROWS])
def test_kernel_function_defined_once_where_the_map_says(name: str, module: str,
                                                         where: str) -> None:
    found = DEFS.get(name, [])
    assert found, f"{name}: not defined anywhere in tdsim/"
    assert len(found) == 1, f"{name}: defined {len(found)} times: {found}"
    rel, qualname, has_doc = found[0]
    assert (rel, qualname) == (module, where), \
        f"{name}: map says {module}: {where}, code has {rel}: {qualname}"
    assert has_doc, f"{name}: no docstring saying what it simplifies"
