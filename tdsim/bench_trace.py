"""What tracing costs: the `make bench` scenario with tracing off, against a build of tdsim
with no tracer checks at all, and with tracing on.

"A build with no tracer checks" is made here, not kept: the ``tdsim`` sources are copied into
a temporary package (``tdsim_nochecks``) with every ``if <...>tracer is not None:`` statement
and every ``tracer = <...>.tracer`` assignment removed from the syntax tree.  Both packages are
imported into this one process and run alternately, so the comparison is side by side on the
same interpreter and machine state (`tdsim.bench` prints the result last; add
``--no-scaling`` to skip its scaling table).  Variants, each the median of `repeat` runs of
`tdsim.bench.BENCH_SCENARIO` (TD exits per wall second of the SimPy run):

* ``no checks``  -- the stripped build (the floor);
* ``off``        -- ``tracer=None``, the normal case;
* ``filtered``   -- a `Tracer` whose kind filter keeps nothing that happens in this run
  (``violation``): every emitting site builds its call, the tracer drops it;
* ``on``         -- a `Tracer` recording every event.
"""

from __future__ import annotations

import ast
import importlib
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

NOCHECKS = "tdsim_nochecks"


class _StripTracer(ast.NodeTransformer):
    """Remove ``if X.tracer is not None:`` / ``if tracer is not None:`` (keeping any else
    branch) and ``tracer = X.tracer``; rename absolute ``tdsim`` imports."""

    @staticmethod
    def _is_tracer(node: ast.AST) -> bool:
        return ((isinstance(node, ast.Name) and node.id == "tracer")
                or (isinstance(node, ast.Attribute) and node.attr == "tracer"))

    removed = 0

    def visit_If(self, node: ast.If) -> Any:
        self.generic_visit(node)
        t = node.test
        if (isinstance(t, ast.Compare) and len(t.ops) == 1 and isinstance(t.ops[0], ast.IsNot)
                and self._is_tracer(t.left) and isinstance(t.comparators[0], ast.Constant)
                and t.comparators[0].value is None):
            self.removed += 1
            return node.orelse or None
        return node

    def visit_Assign(self, node: ast.Assign) -> Any:
        if (len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "tracer" and isinstance(node.value, ast.Attribute)
                and node.value.attr == "tracer"):
            return None
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> Any:
        if node.level == 0 and node.module and node.module.split(".")[0] == "tdsim":
            node.module = NOCHECKS + node.module[len("tdsim"):]
        return node

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        for field in ("body", "orelse", "finalbody"):  # a block emptied by the strip
            block = getattr(node, field, None)
            if isinstance(block, list) and not block and field == "body":
                block.append(ast.Pass())
        return node


def build_nochecks(dest: Path) -> int:
    """Write the stripped copy of the tdsim package under `dest`; returns the number of
    tracer checks removed."""
    src = Path(__file__).parent
    pkg = dest / NOCHECKS
    pkg.mkdir()
    strip = _StripTracer()
    for path in sorted(src.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        tree = ast.fix_missing_locations(strip.visit(tree))
        (pkg / path.name).write_text(ast.unparse(tree) + "\n", encoding="utf-8")
    return strip.removed


def measure(bench_scenario: dict[str, Any], repeat: int = 5) -> dict[str, Any]:
    """TD exits per wall second of `bench_scenario` (`tdsim.bench.BENCH_SCENARIO`, given by
    `tdsim.bench`, which runs this), per variant (medians and all runs)."""
    from .scenario import scenario_from_dict
    from .sim import run
    from .trace import Tracer

    with tempfile.TemporaryDirectory() as tmp:
        removed = build_nochecks(Path(tmp))
        sys.path.insert(0, tmp)
        try:
            nochecks = importlib.import_module(f"{NOCHECKS}.sim")
            nc_scenario = importlib.import_module(f"{NOCHECKS}.scenario")
        finally:
            sys.path.remove(tmp)
        scenario = scenario_from_dict(bench_scenario, name="<bench>")
        stripped = nc_scenario.scenario_from_dict(bench_scenario, name="<bench>")
        run_nochecks: Callable[[Any], Any] = nochecks.run
        variants: dict[str, Callable[[], Any]] = {
            "no checks": lambda: run_nochecks(stripped),
            "off": lambda: run(scenario),
            "filtered": lambda: run(scenario, tracer=Tracer(kinds=["violation"])),
            "on": lambda: run(scenario, tracer=Tracer()),
        }
        rates: dict[str, list[float]] = {name: [] for name in variants}
        exits = {}
        for _ in range(repeat):
            for name, go in variants.items():
                perf = go().perf
                rates[name].append(perf["td_exits_per_s"])
                exits[name] = perf["td_exits"]
        for name in [m for m in sys.modules if m.split(".")[0] == NOCHECKS]:
            del sys.modules[name]
    if len(set(exits.values())) != 1:
        raise AssertionError(f"tdsim bug: variants simulated different runs: {exits}")
    return {"removed_checks": removed, "td_exits": exits["off"],
            "median": {k: statistics.median(v) for k, v in rates.items()}, "runs": rates}


def report(m: dict[str, Any]) -> list[str]:
    """The benchmark lines: each variant's rate and its cost relative to no checks."""
    med = m["median"]
    floor = med["no checks"]
    lines = [f"tracing cost ({m['removed_checks']} tracer checks stripped for the floor; "
             f"median of {len(m['runs']['off'])} alternating runs, TD exits / wall s)"]
    for name, rate in med.items():
        cost = 100 * (floor / rate - 1)
        lines.append(f"  tracing {name:<10} {rate:>12,.0f}   {cost:+6.1f}% time vs no checks")
    return lines
