"""Scenarios as regression tests: expectations and trajectory fingerprints (``tdsim check``).

**Expectations** are the scenario's ``[expect]`` table (schema in `tdsim.schema.EXPECT`):
bounds or exact values on metrics, and invariants that must or must not be violated.
`check_expectations` compares a run's result with them and returns one readable line per
broken expectation; a violation the run records that they do not declare fails the check
too (`undeclared_violations`), so ``tdsim check`` passes only where ``tdsim run`` reports
nothing but the findings the scenario presents.

**Fingerprints** pin the whole event trajectory of a scenario at its seed: every traced event
(time, kind, CPU, vCPU, fields), in time order, rendered as one canonical text line
(`event_line`) and hashed.  Stored beside the scenario, in ``fingerprints/`` next to it:

* ``<stem>.seed<N>.json`` -- event count, SHA-256 of the lines, the scenario's own hash
  (reviewable in a diff);
* ``<stem>.seed<N>.events.gz`` -- the lines themselves (gzip), so that a mismatch can name the
  first divergent event and show the events around it in both runs without re-running the
  old model.

A scenario without a stored fingerprint is checked on its expectations only.  A scenario
with ``kvm.compare`` runs once per strategy; each run meets ``[expect]`` and its own
``[expect.strategy.<name>]``; the fingerprint is that of the ``kvm.host_state`` run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .scenario import Scenario
from .trace import Event, Tracer

CONTEXT_EVENTS = 5  # events shown before the first divergent one
AFTER_EVENTS = 3    # and after it, in each run


def _asks(e: dict[str, Any]) -> int:
    """How many expectations one table (``[expect]`` or a strategy's section) states."""
    return (len(e["metrics"]) + len(e["violations_must"]) + len(e["violations_must_not"])
            + int(e["violations_none"]))


def has_expectations(data: dict[str, Any]) -> bool:
    """The scenario's ``[expect]`` table asks for anything (a scenario with none is no test)."""
    e = data["expect"]
    return bool(_asks(e) or e["call"] or e["msr"]
                or any(_asks(s) for s in e["strategy"].values()))


def strategies_run(data: dict[str, Any]) -> list[str]:
    """The strategies a check runs: those of ``kvm.compare``, else ``kvm.host_state``."""
    return list(data["kvm"]["compare"]) or [data["kvm"]["host_state"]]


# --- expectations -----------------------------------------------------------------------------


def _bound_text(want: Any) -> str:
    if not isinstance(want, dict):
        return f"= {want:g}" if isinstance(want, float) else f"= {want}"
    lo, hi = want.get("min"), want.get("max")
    if lo is not None and hi is not None:
        return f"in [{lo}, {hi}]"
    return f">= {lo}" if lo is not None else f"<= {hi}"


def _meets(got: float, want: Any) -> bool:
    if not isinstance(want, dict):
        return bool(got == want)
    return bool(want.get("min", got) <= got <= want.get("max", got))


def check_expectations(expect: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """One line per broken expectation of `expect` (the ``[expect]`` table or one strategy's
    section of it) against `metrics` (empty: all met).  A metric absent from `metrics`
    counts as 0 (zero counters are left out)."""
    from .findings import NAMES

    out = []
    for name, want in expect["metrics"].items():
        got = metrics.get(name, 0)
        if not _meets(got, want):
            out.append(f"metric {name}: expected {_bound_text(want)}, got {got:g}"
                       if isinstance(got, float) else
                       f"metric {name}: expected {_bound_text(want)}, got {got}")
    counts = {k[len("violations."):]: v for k, v in metrics.items()
              if k.startswith("violations.") and v}
    known = set(NAMES) | set(counts)
    for name in expect["violations_must"] + expect["violations_must_not"]:
        if name not in known:
            out.append(f"invariant {name!r} is unknown (known: {', '.join(sorted(known))})")
    for name in expect["violations_must"]:
        if name in known and not counts.get(name):
            out.append(f"violations.{name}: expected at least 1, got 0")
    for name in expect["violations_must_not"]:
        if counts.get(name):
            out.append(f"violations.{name}: expected 0, got {counts[name]}")
    if expect["violations_none"] and counts:
        got = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        out.append(f"violations: expected none, got {got}")
    return out


_CALL_FIELDS = ("status", "kvm", "regs_out", "regs_written", "exits", "vp_enter_ret",
                "exit_reason", "handle_exit", "kvm_run")


def _matches(want: Any, got: Any) -> bool:
    """`got` has what `want` gives: tables on the keys `want` names, arrays item by item
    (same length), anything else equal."""
    if isinstance(want, dict):
        return isinstance(got, dict) and all(k in got and _matches(v, got[k])
                                              for k, v in want.items())
    if isinstance(want, list):
        return (isinstance(got, list) and len(want) == len(got)
                and all(_matches(w, g) for w, g in zip(want, got, strict=True)))
    return bool(want == got)


def _show(value: Any) -> str:
    return json.dumps(value, default=str)


def check_calls(expect: dict[str, Any], details: dict[str, Any]) -> list[str]:
    """One line per ``[[expect.call]]`` / ``[[expect.msr]]`` the run's records do not
    meet (``details`` is the result's scripted-call records and VMM report)."""
    out = []
    calls = details.get("calls", {})
    for j, want in enumerate(expect["call"]):
        where = f"expect.call[{j}] ({want['vcpu']} step {want['step']})"
        records = [r for r in calls.get(want["vcpu"], []) if r["step"] == want["step"]]
        if len(records) < want["nth"]:
            out.append(f"{where}: recorded {len(records)} time(s), wanted record "
                       f"#{want['nth']}")
            continue
        rec = records[want["nth"] - 1]
        for key in _CALL_FIELDS:
            if want[key] is not None and not _matches(want[key], rec.get(key)):
                out.append(f"{where}: {key}: expected {_show(want[key])}, "
                           f"got {_show(rec.get(key))}")
    got_msrs = details.get("vmm", {}).get("get_msrs", {})
    for j, want in enumerate(expect["msr"]):
        key = f"{want['index']:#x}"
        vals = got_msrs.get(want["vcpu"], {})
        if key not in vals:
            out.append(f"expect.msr[{j}]: {key} of {want['vcpu']} was not read back "
                       "(list it in [vmm] get_msrs)")
        elif vals[key] != want["value"]:
            out.append(f"expect.msr[{j}]: {key} of {want['vcpu']}: expected "
                       f"{_show(want['value'])}, got {_show(vals[key])}")
    return out


def undeclared_violations(tables: list[dict[str, Any]], metrics: dict[str, Any]) -> list[str]:
    """One line per invariant the run violated that no table declares (``violations_must``)
    and none already reports (``violations_none``, ``violations_must_not``): a check passes
    only if every violation ``tdsim run`` would report is an expected finding."""
    if any(t["violations_none"] for t in tables):
        return []
    known = {n for t in tables for n in t["violations_must"] + t["violations_must_not"]}
    counts = {k[len("violations."):]: v for k, v in metrics.items()
              if k.startswith("violations.") and v}
    return [f"violations.{name}: {counts[name]} recorded but not expected (tdsim run reports "
            "them; a finding the scenario presents belongs in violations_must)"
            for name in sorted(set(counts) - known)]


# --- fingerprints -----------------------------------------------------------------------------


def event_line(event: Event) -> str:
    """The canonical text of one event: ``t_ns kind cpu vcpu key=value ...``."""
    t, kind, cpu, vcpu, fields = event
    extra = " ".join(f"{k}={v}" for k, v in fields.items())
    return f"{t} {kind} cpu{cpu} {vcpu or '-'}" + (f" {extra}" if extra else "")


def trajectory(events: list[Event]) -> list[str]:
    """The canonical lines of `events` in time order (emission order breaks ties)."""
    return [event_line(e) for e in sorted(events, key=lambda e: e[0])]


def digest(lines: list[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


def scenario_digest(data: dict[str, Any]) -> str:
    """Hash of the resolved scenario without its expectations (which do not change a run)."""
    body = {k: v for k, v in data.items() if k != "expect"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint_paths(scenario_path: str | Path, seed: int) -> tuple[Path, Path]:
    """Where the fingerprint of `scenario_path` at `seed` lives: (summary .json, events .gz)."""
    p = Path(scenario_path)
    base = f"{p.stem}.seed{seed}"
    folder = p.parent / "fingerprints"
    return folder / f"{base}.json", folder / f"{base}.events.gz"


def write_fingerprint(scenario: Scenario, lines: list[str]) -> Path:
    """Store the fingerprint of `lines` (this scenario's trajectory) beside the scenario."""
    summary, events = fingerprint_paths(scenario.path, scenario.seed)
    summary.parent.mkdir(exist_ok=True)
    doc = {"seed": scenario.seed, "events": len(lines), "sha256": digest(lines),
           "scenario_sha256": scenario_digest(scenario.data)}
    summary.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    # mtime=0: the same trajectory gives the same bytes (no spurious git changes)
    with open(events, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode())
    return summary


def first_divergence(stored: list[str], current: list[str]) -> list[str]:
    """A readable report of where two trajectories part: the first divergent event, the
    events before it (common to both runs) and the next few of each run."""
    n = min(len(stored), len(current))
    i = next((k for k in range(n) if stored[k] != current[k]), n)
    out = [f"first divergent event: #{i} (stored run has {len(stored)} events, "
           f"this run {len(current)})"]
    if i < len(stored) and i < len(current):
        out.append(f"  stored: {stored[i]}")
        out.append(f"  now:    {current[i]}")
    out.append(f"  the {min(i, CONTEXT_EVENTS)} events before it (both runs):")
    out += [f"    #{k} {stored[k]}" for k in range(max(0, i - CONTEXT_EVENTS), i)]
    for label, lines in (("stored run", stored), ("this run", current)):
        out.append(f"  {label} from #{i}:")
        tail = lines[i:i + AFTER_EVENTS]
        out += [f"    #{i + k} {line}" for k, line in enumerate(tail)] or ["    (ends)"]
    return out


def check_fingerprint(scenario: Scenario, lines: list[str]) -> list[str] | None:
    """Compare `lines` with the stored fingerprint: None if none is stored, else the lines of
    a mismatch report (empty: it matches)."""
    summary, events = fingerprint_paths(scenario.path, scenario.seed)
    if not summary.exists():
        return None
    doc = json.loads(summary.read_text(encoding="utf-8"))
    if doc["sha256"] == digest(lines) and doc["events"] == len(lines):
        return []
    out = ["fingerprint differs from " + str(summary)]
    if doc.get("scenario_sha256") != scenario_digest(scenario.data):
        out.append("  (the scenario itself changed since the fingerprint was stored)")
    if events.exists():
        with gzip.open(events, "rt", encoding="utf-8") as f:
            stored = f.read().splitlines()
        out += ["  " + line for line in first_divergence(stored, lines)]
    else:
        out.append(f"  {events} is missing: cannot show the divergent event")
    out.append("  if the change is intended: tdsim check --update-fingerprints "
               + str(scenario.path))
    return out


# --- one scenario -----------------------------------------------------------------------------


@dataclass
class CheckReport:
    """The outcome of checking one scenario: `failures` empty means it passed."""

    path: str
    seed: int
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def render(self) -> str:
        head = f"{'ok  ' if self.ok else 'FAIL'} {self.path} (seed {self.seed})"
        if self.notes:
            head += ": " + "; ".join(self.notes)
        return "\n".join([head] + ["  " + line for line in self.failures])


def check_scenario(scenario: Scenario, update_fingerprints: bool = False,
                   fingerprints: bool = True) -> CheckReport:
    """Run `scenario` once per strategy it names (`strategies_run`) and check each run
    against ``[expect]`` plus that strategy's ``[expect.strategy.<name>]``; the run of
    ``kvm.host_state`` (else the first) is traced and checked against the stored fingerprint.
    With `update_fingerprints`, store that run's fingerprint instead of comparing."""
    from .sim import run

    data = scenario.data
    expect = data["expect"]
    strategies = strategies_run(data)
    traced = data["kvm"]["host_state"] if data["kvm"]["host_state"] in strategies \
        else strategies[0]
    report = CheckReport(scenario.path, scenario.seed)
    for name in expect["strategy"]:
        if name not in strategies:
            report.failures.append(f"expect.strategy.{name}: {name!r} is not run "
                                   f"(strategies: {', '.join(strategies)})")
    asked = 0
    lines: list[str] = []
    for strategy in strategies:
        variant = scenario.replace({"kvm.host_state": strategy, "kvm.compare": []})
        tracer = Tracer() if fingerprints and strategy == traced else None
        result = run(variant, tracer=tracer)
        metrics = result.metrics
        if tracer is not None:
            lines = trajectory(tracer.events)
        tag = f"[{strategy}] " if len(strategies) > 1 else ""
        tables = [t for t in (expect, expect["strategy"].get(strategy)) if t is not None]
        for table in tables:
            asked += _asks(table)
            report.failures += [tag + line for line in check_expectations(table, metrics)]
        report.failures += [tag + line for line in undeclared_violations(tables, metrics)]
        asked += len(expect["call"]) + len(expect["msr"])
        report.failures += [tag + line for line in check_calls(expect, result.details)]
    report.notes.append(f"{asked} expectation(s)" if asked else "no expectations")
    if len(strategies) > 1:
        report.notes.append(f"{len(strategies)} strategies")
    if not fingerprints:
        return report
    fingerprinted = scenario.replace({"kvm.host_state": traced, "kvm.compare": []})
    if update_fingerprints:
        path = write_fingerprint(fingerprinted, lines)
        report.notes.append(f"fingerprint stored in {path} ({len(lines)} events)")
        return report
    mismatch = check_fingerprint(fingerprinted, lines)
    if mismatch is None:
        report.notes.append("no stored fingerprint")
    elif mismatch:
        report.failures += mismatch
    else:
        report.notes.append(f"fingerprint matches ({len(lines)} events)")
    return report
