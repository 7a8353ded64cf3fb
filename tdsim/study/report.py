"""The outputs of a study: CSV tables, the resolved design, plots and a Markdown report.

Files in the output directory::

    results.jsonl   the store: one row per run, in completion order (see store.py)
    results.csv     one line per run, in design order
    summary.csv     per design point x strategy x metric: estimator, n, mean, sd, CI
    paired.csv      per contrast x metric: difference, CI, ratio with its Fieller interval,
                    p-value, Holm-adjusted p-value, min effect, verdict
    uncertainty.csv per conclusion x cost sample: the effect and the sampled costs (studies
                    with [uncertainty])
    design.json     the study, and every design point's resolved scenario (baseline strategy,
                    replication 0: set kvm.host_state and sim.seed to reproduce any row)
    plots/*.png     see plots.py; each also as .svg
    report.md       the answer in words, the design, the tables and the plots, cost
                    uncertainty, warm-up, violations, failed runs, provenance
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsim.study.fmt import ci, interval, p_value, relative
from tdsim.study.labels import metric_label
from tdsim.study.report_sections import (
    errors_section,
    notes_section,
    provenance_section,
    table,
    violations_section,
)
from tdsim.study.store import write_rows_csv
from tdsim.study.summary import MINUS, estimator_name
from tdsim.study.verdicts import sentences

if TYPE_CHECKING:
    from tdsim.study.execute import Executor
    from tdsim.study.summary import StudyRun

VERDICT_SHORT = {"material": "**matters**", "detected": "real, maybe small",
                 "negligible": "negligible", "inconclusive": "inconclusive"}


def write_outputs(result: StudyRun, out_dir: str | Path, executor: Executor | None = None,
                  *, plots: bool = True) -> list[Path]:
    from tdsim.study.plots import write_plots  # matplotlib: only when figures are drawn

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study, summary = result.study, result.summary
    factor_keys = [k for d in study.dimensions for k in d.keys]
    files = [out_dir / "results.csv", out_dir / "summary.csv", out_dir / "paired.csv",
             out_dir / "design.json"]
    write_rows_csv(result.rows, files[0], factor_keys)
    summary.write_csv(files[1], files[2])
    files[3].write_text(json.dumps(_design(result), indent=2, sort_keys=True) + "\n")
    uncertainty_lines: tuple[list[str], list[str]] | None = None
    if study.uncertainty is not None:
        from tdsim.study.sensitivity import analyse, write_csv

        analysis = analyse(summary)
        files.append(write_csv(analysis, out_dir / "uncertainty.csv"))
        uncertainty_lines = (analysis.answer(), analysis.section())
    from tdsim.study.warmup import warmup_section

    warmup_lines = warmup_section(result)
    figures = write_plots(summary, out_dir / "plots", executor) if plots else {}
    report = out_dir / "report.md"
    relative_paths = {m: [p.relative_to(out_dir) for p in ps if p.suffix == ".png"]
                      for m, ps in figures.items()}
    report.write_text(render_report(result, relative_paths, uncertainty=uncertainty_lines,
                                    warmup=warmup_lines))
    return files + [p for ps in figures.values() for p in ps] + [report]


def _design(result: StudyRun) -> dict[str, Any]:
    s = result.study
    return {
        "study": str(s.path), "question": s.question, "scenario": str(s.scenario_path),
        "strategies": list(s.strategies), "baseline": s.baseline,
        "metrics": [m.name for m in s.metrics], "confidence": s.confidence, "seed": s.seed,
        "warmup_us": s.warmup_us, "overrides": dict(s.overrides),
        "replications": s.replications.describe(),
        "compare": [c.describe(s) for c in s.comparisons],
        "ratio": s.ratio_estimator,
        "points": [{"index": p.index, "factors": dict(p.values),
                    "scenario": result.resolved.get(p.index)} for p in result.summary.points],
    }


def render_report(result: StudyRun, plots: dict[str, list[Path]], *,
                  uncertainty: tuple[list[str], list[str]] | None = None,
                  warmup: list[str] | None = None) -> str:
    study, summary = result.study, result.summary
    lines = [f"# Study `{study.name}`", "", f"**Question.** {study.question}", "",
             "## Answer", ""]
    lines += [f"- {s}" for s in sentences(summary)]
    lines += ["", _reading_note(result), ""]
    if uncertainty:
        lines += uncertainty[0] + [""]  # what survives the costs belongs to the answer
    lines += _method(result)
    lines += _design_table(result)
    for m in study.metrics:
        lines += _metric_section(result, m.name, plots.get(m.name, []))
    if uncertainty:
        lines += uncertainty[1]
    lines += warmup or []
    lines += violations_section(result)
    lines += errors_section(result)
    lines += provenance_section(result)
    lines += notes_section(result)
    return "\n".join(lines).rstrip() + "\n"


def _reading_note(result: StudyRun) -> str:
    study = result.study
    conf = f"{study.confidence * 100:g}%"
    me = study.default_min_effect
    me_text = me.describe() + ("" if me.declared else " (the default; set `min_effect`)")
    if study.min_effects:
        me_text += "; " + ", ".join(f"`{k}`: {v.describe()}" for k, v in study.min_effects)
    text = (f"Effects are paired differences with {conf} confidence intervals; relative "
            f"effects are ratios of means with Fieller intervals; \"matters\" means "
            f"significant after Holm's correction over all {_family_size(result)} "
            f"differences and the whole interval beyond the minimum effect: {me_text}.")
    return text if study.comparisons else (f"Means with {conf} confidence intervals "
                                           "(the study compares nothing).")


def _family_size(result: StudyRun) -> int:
    return sum(1 for d in result.summary.differences if not math.isnan(d.p_holm))


def _method(result: StudyRun) -> list[str]:
    study = result.study
    reps = study.replications
    conf = f"{study.confidence * 100:g}%"
    if reps.sequential:
        ci_text = (f"{conf}, Student t; as a sequential study every interval uses the "
                   f"critical value of {study.interval_confidence * 100:.1f}% (docs/"
                   "studies.md: the two-stage procedure)")
    else:
        ci_text = f"{conf}, Student t"
    ratios = [m.name for m in study.metrics if m.is_ratio]
    lines = [
        "## Method", "",
        f"- Study file: `{_shown(study.path)}`; base scenario: `{_shown(study.scenario_path)}`",
        f"- Strategies (`kvm.host_state`): {', '.join(f'`{s}`' for s in study.strategies)}; "
        f"baseline `{study.baseline}`",
        "- Compared: " + ("; ".join(c.describe(study) for c in study.comparisons)
                          or "nothing (one strategy, no compared factor)"),
        f"- Replications: {reps.describe()}; replication r runs with the same `sim.seed` "
        f"(hashed from study seed {study.seed} and r) for every strategy and point: common "
        "random numbers",
        f"- Confidence intervals: {ci_text}",
        f"- Warm-up: {_warmup_text(result)}",
        f"- Runs: {len(result.rows)} ({result.ran} run now, {result.reused} reused from the "
        f"store, {len(result.errors)} failed); executor: {result.executor_name or 'n/a'}",
    ]
    if ratios:
        est = ("ratio of means (sum of a / sum of b over the replications, delta-method "
               "interval)" if study.ratio_estimator == "ratio_of_means"
               else "mean of the per-run ratios a/b")
        lines.append(f"- Ratio metrics ({', '.join(f'`{r}`' for r in ratios)}): {est}; "
                     "set `ratio` to choose")
    if study.overrides:
        lines.append("- Fixed overrides: "
                     + ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in study.overrides))
    return lines + [""]


def _design_table(result: StudyRun) -> list[str]:
    study, summary = result.study, result.summary
    lines = ["## Design", ""]
    dims = study.factor_dimensions
    keys = [k for _, d in dims for k in d.keys]
    if not keys:
        lines.append("One design point: the base scenario.")
    else:
        named = [(i, d) for i, d in dims if d.labels]
        shown = [p for p in summary.points if summary.nominal(p)]
        lines += table(["point"] + [d.label for _, d in named] + [f"`{k}`" for k in keys],
                       [[str(p.index)] + [d.level_label(p.levels[i]) for i, d in named]
                        + [_val(v) for k, v in p.values if k in keys] for p in shown])
    if study.uncertainty is not None:
        lines += ["", f"Each point also runs at {study.uncertainty.samples} samples of the "
                  "costs (see Cost uncertainty); the tables below are at the nominal costs."]
    return lines + [""]


def _metric_section(result: StudyRun, metric: str, plots: list[Path]) -> list[str]:
    study, summary = result.study, result.summary
    label = metric_label(metric)
    est = estimator_name(study, study.metric(metric)).replace("_", " ")
    lines = [f"## {label.text}", "", f"`{metric}` [{label.unit or '-'}], {est}.", ""]
    if metric in summary.missing:
        names = " or ".join(f"`{n}`" for n in study.metric(metric).needs)
        lines += [f"> **Missing** from {summary.missing[metric]} successful runs: the model "
                  f"did not report {names}.", ""]
    shown = [p for p in summary.points if summary.nominal(p)]
    rows = [[study.point_label(p)] + [ci(summary.cells[(p.index, s, metric)])
                                      + _n(result, p.index, s, metric)
                                      for s in study.strategies] for p in shown]
    lines += table(["point"] + [f"`{s}`" for s in study.strategies], rows)
    conf = f"{study.confidence * 100:g}%"
    lines += ["", f"Mean ± {conf} CI half-width over replications (n when it varies).", ""]
    diffs = [d for d in summary.differences if d.metric == metric and not math.isnan(d.p_holm)]
    if diffs:
        rows = [[d.contrast.where, d.contrast.what, interval(d.diff),
                 relative(d.relative), p_value(d.p_holm), _threshold(d.threshold),
                 VERDICT_SHORT[d.verdict]] for d in diffs]
        lines += table(["at", "difference", f"effect ({conf} CI)", "relative (Fieller)",
                        "p (Holm)", "min effect", "verdict"], rows)
        lines += ["", f"Paired differences (treatment {MINUS} baseline, same seeds).", ""]
    for p in plots:
        lines += [f"![{p.stem}]({p.as_posix()})", ""]
    return lines


def _threshold(x: float) -> str:
    if math.isnan(x):
        return "-"
    return f"±{x:.3g}"


def _n(result: StudyRun, point_index: int, strategy: str, metric: str) -> str:
    summary = result.summary
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


def _warmup_text(result: StudyRun) -> str:
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
