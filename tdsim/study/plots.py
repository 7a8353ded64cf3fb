"""Figures of a study, sized for a slide (16:9, 1600 x 900 px), each as PNG and SVG.

Per metric: the means against each swept factor, one line per strategy; the paired
differences the study asks about against a swept factor (or, at a single point, as a forest
plot of the contrasts), with a zero line and the band of effects smaller than `min_effect`;
and, for a study with one categorical factor, a heat map of the differences on a diverging
scale centred on zero.  Labels and units come from the declared metric table
(`tdsim.study.labels`); every strategy keeps one colour in every figure.

Figures are independent jobs (`PlotJob`), so a warm local pool can draw them in parallel.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tdsim.study.design import Dimension, Study
from tdsim.study.execute import import_matplotlib
from tdsim.study.labels import metric_label, strategy_colour
from tdsim.study.summary import MINUS, Difference, Summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from tdsim.study.execute import Executor

SLIDE_IN = (12.8, 7.2)
DPI = 125
MAX_PANELS = 6
MARKERS = "osD^v<>ph*"
VERDICT_WORDS = {"material": "matters", "detected": "real, maybe small",
                 "negligible": "negligible", "inconclusive": "inconclusive"}
STYLE = {"font.size": 14, "axes.titlesize": 15, "axes.labelsize": 14, "legend.fontsize": 12,
         "xtick.labelsize": 12, "ytick.labelsize": 12, "figure.titlesize": 17,
         "svg.hashsalt": "tdsim", "axes.spines.top": False, "axes.spines.right": False}


@dataclass(frozen=True)
class PlotJob:
    kind: str            # "means" | "diffs" | "forest" | "heatmap" | "bars"
    metric: str
    out: Path            # without suffix
    dim: int = -1        # the x dimension ("means", "diffs", "heatmap")
    comparison: int = 0  # ("diffs", "forest", "heatmap")


def slug(text: str) -> str:
    return (text.replace("/", "_per_").replace(".", "_").replace(" ", "")
            .replace("|", "").replace(":", "_").replace("*", "all"))


def plot_jobs(summary: Summary, out_dir: Path) -> list[PlotJob]:
    study = summary.study
    jobs = []
    factors = study.factor_dimensions
    for m in study.metrics:
        s = slug(m.name)
        if not factors or all(len(d.levels) == 1 for _, d in factors):
            jobs.append(PlotJob("bars", m.name, out_dir / f"{s}__by_strategy"))
        for d_i, dim in factors:
            if len(dim.levels) > 1:
                jobs.append(PlotJob("means", m.name, out_dir / f"{s}__vs__{dim.slug}", d_i))
        for c_i, comp in enumerate(study.comparisons):
            tag = "" if len(study.comparisons) == 1 else f"_{c_i}"
            xs = [(i, d) for i, d in factors if i != comp.dimension and len(d.levels) > 1]
            if not xs:
                jobs.append(PlotJob("forest", m.name, out_dir / f"diff{tag}_{s}", -1, c_i))
            for d_i, dim in xs:
                jobs.append(PlotJob("diffs", m.name, out_dir / f"diff{tag}_{s}__vs__{dim.slug}",
                                    d_i, c_i))
            if (comp.dimension is None and len(factors) == 1 and not factors[0][1].numeric
                    and len(factors[0][1].levels) > 1):
                jobs.append(PlotJob("heatmap", m.name, out_dir / f"matrix{tag}_{s}",
                                    factors[0][0], c_i))
    return jobs


def write_plots(summary: Summary, out_dir: str | Path, executor: Executor | None = None
                ) -> dict[str, list[Path]]:
    """Draw every figure under `out_dir` (on `executor`'s workers when it has a local pool);
    return the files per metric (PNG then SVG)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = plot_jobs(summary, out_dir)
    items = [(summary, j) for j in jobs]
    drawn = executor.call(draw, items) if executor is not None else [draw(x) for x in items]
    files: dict[str, list[Path]] = {m.name: [] for m in summary.study.metrics}
    for job, paths in zip(jobs, drawn, strict=True):
        files[job.metric].extend(paths)
    return files


def draw(item: tuple[Summary, PlotJob]) -> list[Path]:
    """Draw one job; returns its PNG and SVG paths."""
    import_matplotlib()
    import matplotlib.pyplot as plt

    summary, job = item
    style: Any = STYLE  # matplotlib types rc keys as a Literal of every known name
    with plt.rc_context(style):
        fig = {"means": _means, "diffs": _diffs, "forest": _forest, "heatmap": _heatmap,
               "bars": _bars}[job.kind](summary, job)
        return _save(fig, job.out)


def _panels(study: Study, skip: set[int]) -> list[tuple[dict[int, int], str]]:
    """Combinations of the factor dimensions not in `skip`: (levels by dimension, title)."""
    others = [i for i, d in study.factor_dimensions if i not in skip and len(d.levels) > 1]
    out = []
    for combo in itertools.product(*(range(len(study.dimensions[i].levels)) for i in others)):
        title = ", ".join(f"{study.dimensions[i].label} = "
                          f"{study.dimensions[i].level_label(lv)}"
                          for i, lv in zip(others, combo, strict=True))
        out.append((dict(zip(others, combo, strict=True)), title))
    return out[:MAX_PANELS]


def _point(summary: Summary, fixed: dict[int, int]) -> Any:
    """The nominal-cost point with `fixed` levels (others at level 0)."""
    levels = [0] * len(summary.study.dimensions)
    for i, lv in fixed.items():
        levels[i] = lv
    return next(p for p in summary.points if p.levels == tuple(levels))


def _x(dim: Dimension) -> tuple[list[float], list[str] | None]:
    if dim.numeric:
        return [float(lv[0]) for lv in dim.levels], None
    return [float(i) for i in range(len(dim.levels))], [dim.level_label(i)
                                                        for i in range(len(dim.levels))]


def _grid(n: int) -> tuple[Figure, list[Axes]]:
    import matplotlib.pyplot as plt

    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=SLIDE_IN, squeeze=False, sharex=True,
                             layout="constrained")
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _yaxis(ax: Axes) -> None:
    """Large or tiny values get a "x 10^6" offset in math text instead of "1e6"."""
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useMathText=True)


def _xaxis(ax: Axes, dim: Dimension, xs: list[float], ticks: list[str] | None) -> None:
    if ticks is not None:
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)  # categories sit in the middle of a slot
        rotate = len(xs) > 4 or max(len(t) for t in ticks) > 10
        ax.set_xticks(xs, [_wrap(t, 16) for t in ticks], rotation=25 if rotate else 0,
                      ha="right" if rotate else "center")
    elif len(xs) <= 12:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.grid(True, alpha=0.3)


def _xlabel(dim: Dimension) -> str:
    if dim.name and dim.numeric:
        return f"{dim.name} ({dim.keys[0]})"
    return dim.label


def _titles(fig: Figure, axes: list[Axes], title: str, sub: list[str]) -> None:
    fig.suptitle(_wrap(title, 90))
    for ax, t in zip(axes, sub, strict=False):
        if t:
            ax.set_title(_wrap(t, 40), fontsize=12)


def _means(summary: Summary, job: PlotJob) -> Figure:
    study = summary.study
    dim = study.dimensions[job.dim]
    label = metric_label(job.metric)
    panels = _panels(study, {job.dim})
    fig, axes = _grid(len(panels))
    xs, ticks = _x(dim)
    span = (max(xs) - min(xs)) or 1.0
    for ax, (fixed, _) in zip(axes, panels, strict=True):
        for s_i, s in enumerate(study.strategies):
            dodge = (s_i - (len(study.strategies) - 1) / 2) * 0.012 * span * (
                1 if dim.numeric else 8)
            pts = [summary.cells[(_point(summary, {**fixed, job.dim: lv}).index, s,
                                  job.metric)] for lv in range(len(xs))]
            ax.errorbar([x + dodge for x in xs], [e.mean for e in pts],
                        yerr=[_hw(e.halfwidth) for e in pts], color=strategy_colour(s),
                        marker=MARKERS[s_i % len(MARKERS)], capsize=4, markersize=7,
                        linewidth=2 if dim.numeric else 0, elinewidth=1.5, label=s)
        _xaxis(ax, dim, xs, ticks)
        _yaxis(ax)
    for ax in axes:
        ax.set_xlabel(_xlabel(dim))
    axes[0].set_ylabel(_wrap(label.axis, 38))
    axes[0].legend(title="strategy")
    _titles(fig, axes, f"{label.text}: mean ± {study.confidence * 100:g}% CI",
            [t for _, t in panels])
    return fig


def _contrast_series(summary: Summary, job: PlotJob) -> dict[str, list[Difference]]:
    """The comparison's nominal differences grouped into series (one per contrast name and
    strategy), each in design order."""
    by_index = {p.index: p for p in summary.points}
    out: dict[str, list[Difference]] = {}
    for d in summary.differences:
        if d.contrast.comparison != job.comparison or d.metric != job.metric:
            continue
        if not summary.nominal(by_index[d.contrast.treatment[0]]):
            continue
        name = d.contrast.what
        if summary.study.comparisons[job.comparison].dimension is not None and len(
                summary.study.strategies) > 1:
            name += f" ({d.contrast.treatment[1]})"
        out.setdefault(name, []).append(d)
    return out


def _band(ax: Axes, diffs: list[Difference], horizontal: bool = True,
          at: dict[float, float] | None = None) -> None:
    """Zero line and the band of effects smaller than the minimum effect: one span when it
    is the same everywhere, else (`at`: x -> threshold) a band that follows the points."""
    m = [d.threshold for d in diffs if not math.isnan(d.threshold)]
    (ax.axhline if horizontal else ax.axvline)(0.0, color="0.3", linewidth=1)
    if m and len(set(m)) == 1 and m[0] > 0:
        (ax.axhspan if horizontal else ax.axvspan)(-m[0], m[0], color="0.85", alpha=0.6,
                                                   zorder=0, label="within min effect")
    elif at and horizontal and any(v > 0 for v in at.values()):
        xs = sorted(at)
        ax.fill_between(xs, [-at[x] for x in xs], [at[x] for x in xs], color="0.85",
                        alpha=0.6, zorder=0, linewidth=0, label="within min effect")


def _diffs(summary: Summary, job: PlotJob) -> Figure:
    study = summary.study
    dim = study.dimensions[job.dim]
    comp = study.comparisons[job.comparison]
    label = metric_label(job.metric)
    skip = {job.dim} | ({comp.dimension} if comp.dimension is not None else set())
    panels = _panels(study, skip)
    fig, axes = _grid(len(panels))
    xs, ticks = _x(dim)
    span = (max(xs) - min(xs)) or 1.0
    series = _contrast_series(summary, job)
    for ax, (fixed, _) in zip(axes, panels, strict=True):
        shown: list[Difference] = []
        band: dict[float, float] = {}
        for k, (name, diffs) in enumerate(series.items()):
            pts = []
            for d in diffs:
                p = next(p for p in summary.points if p.index == d.contrast.treatment[0])
                if all(p.levels[i] == lv for i, lv in fixed.items()):
                    pts.append((xs[p.levels[job.dim]], d))
            if not pts:
                continue
            shown += [d for _, d in pts]
            for x, d in pts:
                if not math.isnan(d.threshold):
                    band[x] = max(band.get(x, 0.0), d.threshold)
            dodge = (k - (len(series) - 1) / 2) * 0.012 * span * (1 if dim.numeric else 8)
            strategy = pts[0][1].contrast.treatment[1]
            ax.errorbar([x + dodge for x, _ in pts], [d.diff.mean for _, d in pts],
                        yerr=[_hw(d.diff.halfwidth) for _, d in pts],
                        color=strategy_colour(strategy), marker=MARKERS[k % len(MARKERS)],
                        capsize=4, markersize=7, linewidth=2 if dim.numeric else 0,
                        elinewidth=1.5, label=name)
        _band(ax, shown, at=band)
        _xaxis(ax, dim, xs, ticks)
        _yaxis(ax)
    for ax in axes:
        ax.set_xlabel(_xlabel(dim))
    axes[0].set_ylabel(_wrap(f"Δ {label.axis}", 38))
    axes[0].legend()
    _titles(fig, axes, f"{label.text}: paired difference, {study.confidence * 100:g}% CI",
            [t for _, t in panels])
    return fig


def _forest(summary: Summary, job: PlotJob) -> Figure:
    import matplotlib.pyplot as plt

    study = summary.study
    label = metric_label(job.metric)
    diffs = [d for ds in _contrast_series(summary, job).values() for d in ds]
    # A slide's width; as tall as the rows need (a single contrast is a banner, not a page).
    height = min(SLIDE_IN[1], 2.4 + 0.9 * len(diffs))
    fig, ax = plt.subplots(figsize=(SLIDE_IN[0], height), layout="constrained")
    names = []
    for i, d in enumerate(diffs):
        y = len(diffs) - 1 - i
        ax.errorbar([d.diff.mean], [y], xerr=[_hw(d.diff.halfwidth)], fmt="o", capsize=6,
                    markersize=9, elinewidth=2,
                    color=strategy_colour(d.contrast.treatment[1]))
        where = "" if d.contrast.where == "(base scenario)" else f"\n{d.contrast.where}"
        names.append((y, _wrap(d.contrast.what + where, 34)))
        ax.annotate(f"{_short(d.diff.mean)}: {VERDICT_WORDS[d.verdict]}", (d.diff.mean, y),
                    textcoords="offset points", xytext=(0, 12), ha="center", fontsize=12)
    _band(ax, diffs, horizontal=False)
    ax.margins(x=0.12)
    ax.set_yticks([y for y, _ in names], [n for _, n in names])
    ax.set_ylim(-0.6, len(diffs) - 0.4)
    ax.set_xlabel(_wrap(f"Δ {label.axis}", 70))
    ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(_wrap(f"{label.text}: paired difference, "
                       f"{study.confidence * 100:g}% CI", 90))
    return fig


def _heatmap(summary: Summary, job: PlotJob) -> Figure:
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    study = summary.study
    dim = study.dimensions[job.dim]
    label = metric_label(job.metric)
    series = _contrast_series(summary, job)
    names = list(series)
    grid = [[d.diff.mean for d in ds] for ds in series.values()]
    finite = [abs(v) for row in grid for v in row if not math.isnan(v)]
    top = max(finite, default=0.0) or 1.0
    fig, ax = plt.subplots(figsize=SLIDE_IN, layout="constrained")
    im = ax.imshow(grid, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -top, top), aspect="auto")
    from matplotlib.patches import Rectangle

    for i, ds in enumerate(series.values()):
        for j, d in enumerate(ds):
            strong = d.verdict == "material"
            if d.verdict in ("negligible", "inconclusive"):  # no difference shown: fade it
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="white",
                                       alpha=0.7, edgecolor="none"))
            dark = strong and abs(d.diff.mean) > 0.6 * top
            ax.text(j, i, f"{_short(d.diff.mean)}\n±{_hw(d.diff.halfwidth):.3g}",
                    ha="center", va="center", fontsize=12,
                    fontweight="bold" if strong else "normal",
                    color="white" if dark else ("black" if strong else "0.35"))
    ax.set_xticks(range(len(dim.levels)),
                  [_wrap(dim.level_label(i), 14) for i in range(len(dim.levels))],
                  rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel(dim.label)
    bar = fig.colorbar(im, ax=ax, shrink=0.9)
    bar.set_label(_wrap(f"Δ {label.axis}", 40))
    fig.suptitle(_wrap(f"{label.text}: paired difference from {study.baseline} "
                       f"± {study.confidence * 100:g}% CI half-width (bold: matters; faded: "
                       "no difference shown)", 90))
    return fig


def _bars(summary: Summary, job: PlotJob) -> Figure:
    import matplotlib.pyplot as plt

    study = summary.study
    label = metric_label(job.metric)
    p = next(p for p in summary.points if summary.nominal(p))
    es = [summary.cells[(p.index, s, job.metric)] for s in study.strategies]
    fig, ax = plt.subplots(figsize=SLIDE_IN, layout="constrained")
    ax.bar(range(len(es)), [e.mean for e in es], yerr=[_hw(e.halfwidth) for e in es],
           capsize=6, color=[strategy_colour(s) for s in study.strategies], alpha=0.9)
    ax.set_xticks(range(len(es)), list(study.strategies))
    ax.set_ylabel(_wrap(label.axis, 45))
    ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(_wrap(f"{label.text}: mean ± {study.confidence * 100:g}% CI", 90))
    return fig


def _hw(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def _short(x: float) -> str:
    return f"{x:+.3g}".replace("-", MINUS) if x else "0"


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _save(fig: Figure, stem: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
    fig.savefig(png, dpi=DPI)
    fig.set_layout_engine("none")  # laid out once, for the PNG; the SVG keeps the positions
    fig.savefig(svg, metadata={"Date": None})
    plt.close(fig)
    return [png, svg]
