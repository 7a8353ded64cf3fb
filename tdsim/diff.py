"""``tdsim diff A.json B.json``: what changed between two result documents.

For each pair of runs: every metric whose value differs, with the delta and the relative
change; the violations only one side has (matched on invariant, time, CPU, vCPU and detail);
the scenario keys whose resolved values differ.  Documents of a strategy comparison are
compared strategy by strategy, documents of several scenarios scenario by scenario; a run
present on one side only is reported as such.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from tdsim.scenario import ScenarioError

MAX_VIOLATIONS_SHOWN = 20


@dataclass
class RunDiff:
    """The differences between two runs with the same label."""

    label: str
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metric, a, b, delta, rel
    unchanged: int = 0
    violations_added: list[dict[str, Any]] = field(default_factory=list)
    violations_removed: list[dict[str, Any]] = field(default_factory=list)
    scenario: list[dict[str, Any]] = field(default_factory=list)  # key, a, b
    partial: tuple[bool, bool] = (False, False)

    @property
    def same(self) -> bool:
        return not (self.metrics or self.violations_added or self.violations_removed
                    or self.scenario)


@dataclass
class Diff:
    """Every run pair's differences, and the runs only one document has."""

    runs: list[RunDiff]
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.only_a and not self.only_b and all(r.same for r in self.runs)


def load_document(path: str) -> dict[str, dict[str, Any]]:
    """The runs of the result document at `path`, by label (a strategy, a scenario path,
    or ``""`` for a single run); bad input raises `ScenarioError`."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise ScenarioError(path, "<file>", f"cannot read: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScenarioError(path, "<json>", f"not a JSON document: {e}") from None
    if not isinstance(doc, dict):
        raise ScenarioError(path, "<root>", "not a tdsim result document (expected an "
                                            "object)")
    runs = _runs(doc, "")
    if not runs:
        raise ScenarioError(path, "<root>", "not a tdsim result document: no \"metrics\", "
                                            "\"comparison\" or \"runs\" (write one with "
                                            "tdsim run --json)")
    for label, run in runs.items():
        if not isinstance(run.get("metrics"), dict):
            where = f"{label}.metrics" if label else "metrics"
            raise ScenarioError(path, where, "expected an object of metrics")
    return runs


def _runs(doc: dict[str, Any], prefix: str) -> dict[str, dict[str, Any]]:
    if "metrics" in doc:
        return {prefix: doc}
    out: dict[str, dict[str, Any]] = {}
    if isinstance(doc.get("comparison"), dict):
        for strategy, run in doc["comparison"].items():
            if isinstance(run, dict):
                out[f"{prefix} [{strategy}]".strip()] = dict(run, partial=run.get(
                    "partial", doc.get("partial", False)))
    if isinstance(doc.get("runs"), list):
        for run in doc["runs"]:
            if isinstance(run, dict):
                out.update(_runs(run, str(run.get("scenario_path", "?"))))
    return out


def diff_documents(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]],
                   show_all: bool = False) -> Diff:
    """Compare two documents' runs (as `load_document` returns them)."""
    if len(a) == 1 and len(b) == 1:  # one run each: compare them whatever their labels
        (la, ra), (lb, rb) = next(iter(a.items())), next(iter(b.items()))
        return Diff([diff_runs(la if la == lb else f"{la or 'A'} / {lb or 'B'}".strip(" /"),
                               ra, rb, show_all)])
    common = [k for k in a if k in b]
    return Diff([diff_runs(k, a[k], b[k], show_all) for k in common],
                only_a=[k for k in a if k not in b], only_b=[k for k in b if k not in a])


def diff_runs(label: str, a: dict[str, Any], b: dict[str, Any], show_all: bool = False
              ) -> RunDiff:
    """The differences between two run documents."""
    out = RunDiff(label, partial=(bool(a.get("partial")), bool(b.get("partial"))))
    ma, mb = a.get("metrics", {}), b.get("metrics", {})
    for key in sorted(set(ma) | set(mb)):
        va, vb = ma.get(key, 0), mb.get(key, 0)  # zero-valued metrics may be absent
        if va == vb and not show_all:
            out.unchanged += 1
            continue
        delta = _number(vb) - _number(va)
        # relative to A; None when A is 0 and B is not (a metric that appeared)
        rel = delta / abs(_number(va)) if _number(va) else (0.0 if delta == 0 else None)
        out.metrics.append({"metric": key, "a": va, "b": vb, "delta": delta, "rel": rel})
    va_, vb_ = Counter(map(_violation_key, a.get("violations", []))), \
        Counter(map(_violation_key, b.get("violations", [])))
    out.violations_added = [dict(k) for k in (vb_ - va_).elements()]
    out.violations_removed = [dict(k) for k in (va_ - vb_).elements()]
    fa, fb = _flatten(a.get("scenario", {})), _flatten(b.get("scenario", {}))
    for key in sorted(set(fa) | set(fb)):
        if fa.get(key, "<unset>") != fb.get(key, "<unset>"):
            out.scenario.append({"key": key, "a": fa.get(key, "<unset>"),
                                 "b": fb.get(key, "<unset>")})
    return out


def _number(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


def _violation_key(v: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple((k, v.get(k)) for k in ("invariant", "t_ns", "cpu", "vcpu", "detail"))


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"vm": [{"vcpus": 2}]}`` -> ``{"vm[0].vcpus": 2}`` (the loader's key paths)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: value}


# --- the command ------------------------------------------------------------------------------


def cmd_diff(args: argparse.Namespace) -> int:
    """The body of ``tdsim diff`` (arguments declared in `tdsim.cli`)."""
    a, b = load_document(args.a), load_document(args.b)
    result = diff_documents(a, b, show_all=args.all)
    if args.format == "json":
        doc = {"same": result.same, "only_a": result.only_a, "only_b": result.only_b,
               "runs": [dict(asdict(r), same=r.same) for r in result.runs]}
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
    else:
        from tdsim.cli_render import render

        render(blocks(result, args.a, args.b), sys.stdout)
    return 0 if result.same else 1


def _signed(x: float) -> str:
    from tdsim.cli_summary import num

    return ("+" if x > 0 else "") + num(int(x) if float(x).is_integer() else x)


def _rel(rel: float | None) -> str:
    if rel is None:
        return "new"
    return f"{100 * rel:+.1f}%"


def blocks(d: Diff, path_a: str, path_b: str) -> list[Any]:
    """`d` as summary blocks (`tdsim.cli_summary`)."""
    from tdsim.cli_summary import Line, Table, num

    out: list[Any] = [Line(f"tdsim diff  A = {path_a}  B = {path_b}", "bold")]
    if d.same:
        out.append(Line("no differences in metrics, violations or scenario", "green"))
    for label in d.only_a:
        out.append(Line(f"only in A: {label}", "red"))
    for label in d.only_b:
        out.append(Line(f"only in B: {label}", "red"))
    for r in d.runs:
        name = f" ({r.label})" if r.label else ""
        if r.same:
            if not d.same:
                out.append(Line(f"no differences{name}", "green"))
            continue
        if any(r.partial):
            which = " and ".join(s for s, p in zip("AB", r.partial, strict=True) if p)
            out.append(Line(f"note{name}: {which} is partial (an interrupted run)", "red"))
        if r.scenario:
            table = Table(f"Scenario differences{name}", ("key", "A", "B"), text=("A", "B"))
            for s in r.scenario:
                table.add(s["key"], json.dumps(s["a"]), json.dumps(s["b"]))
            out.append(table)
        if r.metrics:
            title = f"Metrics that differ{name}: {len(r.metrics)}"
            if r.unchanged:
                title += f" ({r.unchanged} unchanged not shown)"
            table = Table(title, ("metric", "A", "B", "B - A", "change"))
            for m in r.metrics:
                table.add(m["metric"], num(m["a"]), num(m["b"]), _signed(m["delta"]),
                          _rel(m["rel"]))
            out.append(table)
        for what, items in (("only in B (added)", r.violations_added),
                            ("only in A (removed)", r.violations_removed)):
            if not items:
                continue
            table = Table(f"Violations {what}{name}: {len(items)}",
                          ("time (ns)", "cpu", "vCPU / task", "invariant", "detail"),
                          text=("vCPU / task", "invariant", "detail"))
            for v in items[:MAX_VIOLATIONS_SHOWN]:
                table.add(num(v["t_ns"]), v["cpu"], v["vcpu"], v["invariant"], v["detail"])
            out.append(table)
            if len(items) > MAX_VIOLATIONS_SHOWN:
                out.append(Line(f"... and {len(items) - MAX_VIOLATIONS_SHOWN} more", "red"))
    return out
