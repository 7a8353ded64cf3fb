"""The report's closing sections: violations found, failed runs, provenance and notes."""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from tdsim.study.provenance import ROW_FIELDS, analysis_versions, model_sha256, provenance_of

if TYPE_CHECKING:
    from tdsim.study.summary import StudyRun

MAX_ERRORS_LISTED = 20


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[c.replace("|", "\\|") for c in r] for r in [header] + rows]
    out = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return out


def violations_section(result: StudyRun) -> list[str]:
    """Modelled-system invariants broken, per point and strategy: the study's findings."""
    study = result.study
    cells: dict[tuple[int, str], dict[str, Any]] = {}
    for r in result.rows:
        if r["status"] != "ok" or not r["metrics"].get("violations"):
            continue
        c = cells.setdefault((r["point_index"], r["strategy"]),
                             {"runs": 0, "total": 0, "by": {}, "example": None})
        c["runs"] += 1
        c["total"] += r["metrics"]["violations"]
        for name, n in r["metrics"].items():
            if name.startswith("violations."):
                inv = name.removeprefix("violations.")
                c["by"][inv] = c["by"].get(inv, 0) + n
        if c["example"] is None and r["violation_examples"]:
            v = r["violation_examples"][0]
            c["example"] = (f"seed {r['seed']}, t={v.get('t_ns')} ns, cpu {v.get('cpu')}, "
                            f"{v.get('vcpu')}: {v.get('invariant')}: {v.get('detail')}")
    lines = ["## Violations found", ""]
    if not cells:
        return lines + ["No run broke a modelled-system invariant.", ""]
    n_runs = {k: ok for k, (ok, _err) in result.summary.runs.items()}
    rows = []
    points = {p.index: p for p in result.summary.points}
    for (pi, s), c in sorted(cells.items(), key=lambda kv: (kv[0][0],
                                                             study.strategies.index(kv[0][1]))):
        rows.append([study.point_label(points[pi], costs=True), f"`{s}`",
                     f"{c['runs']} of {n_runs[(pi, s)]}", str(c["total"]),
                     ", ".join(f"{k} {v}" for k, v in sorted(c["by"].items())),
                     c["example"] or ""])
    lines += table(["point", "strategy", "runs with violations", "violations",
                    "by invariant", "first example"], rows)
    clean = [s for s in study.strategies if not any(k[1] == s for k in cells)]
    if clean:
        lines += ["", "No violations under: " + ", ".join(f"`{s}`" for s in clean) + "."]
    return lines + [""]


def errors_section(result: StudyRun) -> list[str]:
    errors = result.errors
    if not errors:
        return []
    lines = ["## Failed runs", "",
             f"{len(errors)} runs failed; they are left out of every estimate.  "
             "`--resume` reruns them.", ""]
    rows = [[json.dumps(r["point"]), r["strategy"], str(r["replication"]), str(r["seed"]),
             r["error"] or ""] for r in errors[:MAX_ERRORS_LISTED]]
    lines += table(["point", "strategy", "replication", "seed", "error"], rows)
    if len(errors) > MAX_ERRORS_LISTED:
        lines.append(f"\n… and {len(errors) - MAX_ERRORS_LISTED} more (see results.csv).")
    return lines + [""]


def provenance_section(result: StudyRun) -> list[str]:
    """Which model made the rows: one line per distinct provenance, with its run count."""
    groups = Counter(provenance_of(r) for r in result.rows)
    current = model_sha256()
    rows = []
    for prov, n in sorted(groups.items(), key=lambda kv: -kv[1]):
        fields = dict(zip(ROW_FIELDS, prov, strict=True))
        digest = fields["model_sha256"]
        mark = "" if digest == current else " (**not this model**)"
        rows.append([str(n), fields["tdsim_version"], f"`{digest[:16]}`{mark}",
                     fields["python"]] + [fields[k] for k in ROW_FIELDS[3:]])
    lines = ["## Provenance", ""]
    lines += table(["runs", "tdsim", "model source SHA-256", "Python"]
                   + list(ROW_FIELDS[3:]), rows)
    versions = ", ".join(f"{k} {v}" for k, v in analysis_versions().items())
    lines += ["", f"Analysis by this tdsim (model source `{current[:16]}`) with {versions}."]
    if result.foreign_rows:
        lines += ["", f"**Mixed models:** {result.foreign_rows} runs were made by another "
                  "version of the model and reused with `--allow-mixed`."]
    return lines + [""]


def notes_section(result: StudyRun) -> list[str]:
    study = result.study
    notes = []
    if study.replications.sequential:
        failing = {p.index for p in result.summary.points
                   if any(result.summary.runs[(p.index, s)][1] for s in study.strategies)}
        if failing:
            notes.append("Points with failed runs got no second stage.")
        capped = sorted({study.point_label(p) for p in result.summary.points
                         if any(result.summary.cells[(p.index, s, m.name)].n
                                >= study.replications.max
                                for s in study.strategies for m in study.metrics)})
        if capped:
            notes.append(f"The first stage asked for more than max = "
                         f"{study.replications.max} replications at: {'; '.join(capped)}; "
                         "the target half-width may not hold there.")
    if result.stale_rows:
        notes.append(f"{result.stale_rows} rows in the store belong to no run of this study "
                     "(an earlier version of the study or scenario) and were ignored.")
    if result.skipped_lines:
        notes.append(f"{result.skipped_lines} torn or unreadable lines in the store were "
                     "skipped.")
    notes.append("Costs marked `placeholder` in the scenario schema are uncalibrated: read "
                 "absolute times as illustrative; counts (exits, WRMSRs, reloads) do not "
                 "depend on them directly.  An `[uncertainty]` study shows which conclusions "
                 "survive the costs' plausible ranges.")
    return ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
