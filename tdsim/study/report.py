"""The outputs of a study: CSV tables, the resolved design, plots and a Markdown report.

Files in the output directory::

    results.jsonl   the store: one row per run, in completion order (see store.py)
    results.csv     one line per run, in design order
    summary.csv     per design point x strategy x metric: n, mean, sd, CI
    paired.csv      per design point x non-baseline strategy x metric: paired difference, CI
    design.json     the study, and every design point's resolved scenario (baseline strategy,
                    replication 0: set kvm.host_state and sim.seed to reproduce any row)
    plots/*.png     see plots.py
    report.md       the question, the design, the tables and the plots
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsim.study.execute import tdsim_version
from tdsim.study.plots import write_plots
from tdsim.study.stats import Estimate
from tdsim.study.store import write_rows_csv

if TYPE_CHECKING:
    from tdsim.study.runner import StudyRun

MAX_ERRORS_LISTED = 20


def write_outputs(result: StudyRun, out_dir: str | Path, *, executor_name: str = ""
                  ) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study, summary = result.study, result.summary
    factor_keys = [k for d in study.dimensions for k in d.keys]
    files = [out_dir / "results.csv", out_dir / "summary.csv", out_dir / "paired.csv",
             out_dir / "design.json"]
    write_rows_csv(result.rows, files[0], factor_keys)
    summary.write_csv(files[1], files[2])
    files[3].write_text(json.dumps(_design(result), indent=2, sort_keys=True) + "\n")
    plots = write_plots(summary, out_dir / "plots")
    report = out_dir / "report.md"
    relative = {m: [p.relative_to(out_dir) for p in ps] for m, ps in plots.items()}
    report.write_text(render_report(result, relative, executor_name=executor_name))
    return files + [p for ps in plots.values() for p in ps] + [report]


def _design(result: StudyRun) -> dict[str, Any]:
    s = result.study
    return {
        "study": str(s.path), "question": s.question, "scenario": str(s.scenario_path),
        "strategies": list(s.strategies), "baseline": s.baseline,
        "metrics": [m.name for m in s.metrics], "confidence": s.confidence, "seed": s.seed,
        "warmup_us": s.warmup_us, "overrides": dict(s.overrides),
        "replications": s.replications.describe(),
        "points": [{"index": p.index, "factors": dict(p.values),
                    "scenario": result.resolved.get(p.index)} for p in result.summary.points],
    }


def fmt_ci(e: Estimate) -> str:
    """``mean ± half-width`` with the half-width to two significant digits."""
    if e.n == 0:
        return "-"
    if e.n == 1 or math.isnan(e.halfwidth):
        return f"{e.mean:.4g} (n=1)"
    if e.halfwidth == 0:
        return f"{e.mean:.6g} ± 0"
    d = max(0, min(6, 1 - math.floor(math.log10(e.halfwidth))))
    mean = round(e.mean, d) + 0.0  # + 0.0 turns a rounded -0.0 into 0.0
    return f"{mean:,.{d}f} ± {e.halfwidth:,.{d}f}"


def fmt_diff(d: Estimate, base: Estimate) -> str:
    """A paired difference, its relative size and a mark when its CI excludes zero."""
    if d.n == 0:
        return "-"
    text = fmt_ci(d)
    if base.n and base.mean and not math.isnan(base.mean):
        text += f" ({d.mean / abs(base.mean) * 100:+.1f}%)"
    if d.n > 1 and not math.isnan(d.halfwidth) and (d.low > 0 or d.high < 0):
        text = f"**{text}**"
    return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[c.replace("|", "\\|") for c in r] for r in [header] + rows]
    out = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return out


def render_report(result: StudyRun, plots: dict[str, list[Path]], *,
                  executor_name: str = "") -> str:
    study, summary = result.study, result.summary
    conf = f"{study.confidence * 100:g}%"
    n_err = len(result.errors)
    lines = [
        f"# Study `{study.name}`",
        "",
        f"**Question.** {study.question}",
        "",
        f"- Study file: `{_shown(study.path)}`",
        f"- Base scenario: `{_shown(study.scenario_path)}`",
        f"- Strategies (`kvm.host_state`): {', '.join(f'`{s}`' for s in study.strategies)}; "
        f"baseline `{study.baseline}`",
        f"- Replications: {study.replications.describe()}; replication r runs with "
        f"`sim.seed` = {study.seed} + r for every strategy and point (common random numbers)",
        f"- Confidence intervals: {conf}, Student t",
        f"- Warm-up: {_warmup(result)}",
        f"- Runs: {len(result.rows)} ({result.ran} run now, {result.reused} reused from the "
        f"store, {n_err} failed); executor: {executor_name or 'n/a'}; "
        f"tdsim {tdsim_version()}",
    ]
    if study.overrides:
        lines.append("- Fixed overrides: "
                     + ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in study.overrides))
    lines += ["", "## Design", ""]
    factor_keys = [k for d in study.dimensions for k in d.keys]
    named = [(i, d) for i, d in enumerate(study.dimensions) if d.labels]
    if factor_keys:
        lines += _table(["point"] + [d.label for _, d in named] + [f"`{k}`" for k in factor_keys],
                        [[str(p.index)] + [d.level_label(p.levels[i]) for i, d in named]
                         + [_val(v) for _, v in p.values] for p in summary.points])
    else:
        lines.append("One design point: the base scenario.")
    lines.append("")

    for m in study.metrics:
        lines += [f"## `{m.name}`", ""]
        if m.name in summary.missing:
            lines += [f"> **Missing** from {summary.missing[m.name]} successful runs: the model "
                      f"did not report {' or '.join(f'`{n}`' for n in m.needs)}.", ""]
        header = ["point"] + [f"`{s}`" for s in study.strategies]
        others = [s for s in study.strategies if s != study.baseline]
        header += [f"`{s}` - `{study.baseline}`" for s in others]
        rows = []
        for p in summary.points:
            row = [study.point_label(p)]
            row += [fmt_ci(summary.cells[(p.index, s, m.name)]) + _n(summary, p.index, s,
                                                                     m.name)
                    for s in study.strategies]
            row += [fmt_diff(summary.paired[(p.index, s, m.name)],
                             summary.cells[(p.index, study.baseline, m.name)])
                    for s in others]
            rows.append(row)
        lines += _table(header, rows)
        lines += ["", f"Mean ± {conf} CI half-width over replications (n when it varies). "
                  + ("Differences are means of per-replication differences from the baseline; "
                     "**bold** when the CI excludes zero." if others else ""), ""]
        for p in plots.get(m.name, ()):
            lines += [f"![{p.stem}]({p.as_posix()})", ""]

    lines += _violations_section(result)
    lines += _errors_section(result)
    lines += _notes(result)
    return "\n".join(lines).rstrip() + "\n"


def _n(summary, point_index: int, strategy: str, metric: str) -> str:
    ns = {summary.cells[(point_index, s, metric)].n for s in summary.study.strategies}
    wanted = summary.study.replications
    e = summary.cells[(point_index, strategy, metric)]
    if len(ns) > 1 or wanted.sequential or (wanted.count and e.n != wanted.count):
        return f" (n={e.n})"
    return ""


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _val(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _warmup(result: StudyRun) -> str:
    """The warm-up as requested, and whether the model says it applied it."""
    study = result.study
    if not study.warmup_us:
        return "none (every event from t = 0 counts)"
    ok = [r for r in result.rows if r["status"] == "ok"]
    if ok and all(r["metrics"].get("sim.measured_ns", math.inf)
                  < r["metrics"].get("sim.duration_ns", 0) for r in ok):
        return (f"{study.warmup_us:g} µs (`sim.warmup_us`): metrics count only what follows "
                "it; violations are counted over the whole run")
    return (f"{study.warmup_us:g} µs requested (`sim.warmup_us`), but **not applied** (the "
            "runs' `sim.measured_ns` is not below `sim.duration_ns`): the metrics cover the "
            "whole run, warm-up included")


def _violations_section(result: StudyRun) -> list[str]:
    """Modelled-system invariants broken, per point and strategy: the study's verdicts."""
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
        rows.append([study.point_label(points[pi]), f"`{s}`",
                     f"{c['runs']} of {n_runs[(pi, s)]}", str(c["total"]),
                     ", ".join(f"{k} {v}" for k, v in sorted(c["by"].items())),
                     c["example"] or ""])
    lines += _table(["point", "strategy", "runs with violations", "violations",
                     "by invariant", "first example"], rows)
    clean = [s for s in study.strategies if not any(k[1] == s for k in cells)]
    if clean:
        lines += ["", "No violations under: " + ", ".join(f"`{s}`" for s in clean) + "."]
    return lines + [""]


def _errors_section(result: StudyRun) -> list[str]:
    errors = result.errors
    if not errors:
        return []
    lines = ["## Failed runs", "",
             f"{len(errors)} runs failed; they are left out of every estimate.  "
             "`--resume` reruns them.", ""]
    rows = [[json.dumps(r["point"]), r["strategy"], str(r["replication"]), str(r["seed"]),
             r["error"] or ""] for r in errors[:MAX_ERRORS_LISTED]]
    lines += _table(["point", "strategy", "replication", "seed", "error"], rows)
    if len(errors) > MAX_ERRORS_LISTED:
        lines.append(f"\n… and {len(errors) - MAX_ERRORS_LISTED} more (see results.csv).")
    return lines + [""]


def _notes(result: StudyRun) -> list[str]:
    study = result.study
    notes = []
    if study.replications.sequential:
        notes.append("Replications were added until the target half-width held (or the cap "
                     "was reached); a sequential stopping rule makes the nominal coverage "
                     "approximate.")
        failing = {p.index for p in result.summary.points
                   if any(result.summary.runs[(p.index, s)][1] for s in study.strategies)}
        if failing:
            notes.append("Points with failed runs got no further replications.")
        capped = [study.point_label(p) for p in result.summary.points
                  if p.index not in failing
                  and any(r > study.replications.target_rel_halfwidth for r in
                          result.summary.rel_halfwidths(p.index, study.replications.metrics))]
        if capped:
            notes.append(f"The target was not reached within max = {study.replications.max} "
                         f"at: {'; '.join(capped)}.")
    if result.stale_rows:
        notes.append(f"{result.stale_rows} rows in the store belong to no run of this study "
                     "(an earlier version of the study or scenario) and were ignored.")
    if result.skipped_lines:
        notes.append(f"{result.skipped_lines} torn or unreadable lines in the store were "
                     "skipped.")
    notes.append("Costs marked `placeholder` in the scenario schema are uncalibrated: read "
                 "absolute times as illustrative; counts (exits, WRMSRs, reloads) do not "
                 "depend on them directly.")
    return ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
