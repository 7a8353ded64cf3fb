"""PNG plots of a study (matplotlib, Agg backend: no display needed).

For each reported metric and each swept dimension: the metric's mean against the dimension,
one line per strategy, with CI bars; and the paired difference of each strategy from the
baseline, with CI bars and a zero line.  When other dimensions are swept too, each combination
of their levels gets its own panel.  A study with one categorical dimension also gets a
heat map (strategy x level), the shape of a verdict matrix.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tdsim.study.spec import Dimension, Study
from tdsim.study.summary import Summary

MAX_PANELS = 12
MARKERS = "osD^v<>ph*"


def slug(text: str) -> str:
    return (text.replace("/", "_per_").replace(".", "_").replace(" ", "")
            .replace("|", "").replace(":", "_"))


def write_plots(summary: Summary, out_dir: str | Path) -> dict[str, list[Path]]:
    """Write every plot under `out_dir`; return the paths per metric."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study = summary.study
    files: dict[str, list[Path]] = {}
    for m in study.metrics:
        mine = files[m.name] = []
        if not study.dimensions:
            mine.append(_strategy_bars(summary, m.name, out_dir))
            continue
        for d_i in range(len(study.dimensions)):
            mine.append(_metric_vs(summary, m.name, d_i, out_dir, paired=False))
            if len(study.strategies) > 1:
                mine.append(_metric_vs(summary, m.name, d_i, out_dir, paired=True))
        if len(study.dimensions) == 1 and not study.dimensions[0].numeric:
            mine.append(_heatmap(summary, m.name, out_dir))
    return files


def _panels(study: Study, d_i: int) -> list[tuple[tuple[int, ...], str]]:
    """Combinations of the other dimensions' levels: (levels by dimension with -1 at d_i,
    panel title)."""
    others = [i for i in range(len(study.dimensions)) if i != d_i]
    combos = itertools.product(*(range(len(study.dimensions[i].levels)) for i in others))
    panels = []
    for combo in combos:
        levels = [-1] * len(study.dimensions)
        for i, lv in zip(others, combo, strict=True):
            levels[i] = lv
        title = ", ".join(f"{study.dimensions[i].label}={study.dimensions[i].level_label(lv)}"
                          for i, lv in zip(others, combo, strict=True))
        panels.append((tuple(levels), title))
    return panels[:MAX_PANELS]


def _x(dim: Dimension) -> tuple[list[float], list[str] | None]:
    if dim.numeric:
        return [float(lv[0]) for lv in dim.levels], None
    return list(range(len(dim.levels))), [dim.level_label(i) for i in range(len(dim.levels))]


def _metric_vs(summary: Summary, metric: str, d_i: int, out_dir: Path, *, paired: bool
               ) -> Path:
    study = summary.study
    dim = study.dimensions[d_i]
    panels = _panels(study, d_i)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False,
                             sharex=True)
    xs, ticklabels = _x(dim)
    span = (max(xs) - min(xs)) or 1.0
    strategies = [s for s in study.strategies if not (paired and s == study.baseline)]
    point_at = {p.levels: p for p in summary.points}
    for ax, (levels, title) in zip(axes.flat, panels, strict=False):
        for s_i, s in enumerate(strategies):
            dodge = (s_i - (len(strategies) - 1) / 2) * 0.012 * span * (1 if dim.numeric
                                                                       else 8)
            means, hws, xv = [], [], []
            for lv_i, x in enumerate(xs):
                lv = list(levels)
                lv[d_i] = lv_i
                p = point_at[tuple(lv)]
                table = summary.paired if paired else summary.cells
                e = table[(p.index, s, metric)]
                xv.append(x + dodge)
                means.append(e.mean)
                hws.append(0.0 if math.isnan(e.halfwidth) else e.halfwidth)
            label = f"{s} - {study.baseline}" if paired else s
            # Lines join levels of a numeric factor; categorical levels are not a sequence.
            ax.errorbar(xv, means, yerr=hws, marker=MARKERS[s_i % len(MARKERS)], capsize=3,
                        label=label, linewidth=1.4 if dim.numeric else 0, elinewidth=1.2,
                        markersize=5)
        if paired:
            ax.axhline(0.0, color="0.4", linewidth=0.8, linestyle="--")
        if ticklabels is not None:
            ax.set_xticks(xs, ticklabels, rotation=20 if len(xs) > 4 else 0)
        elif len(xs) <= 12:
            ax.set_xticks(xs, [f"{x:g}" for x in xs], rotation=30 if len(xs) > 6 else 0)
        if title:
            ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    xlabel = dim.label
    if dim.numeric and dim.name:
        xlabel += f" ({dim.keys[0]})"
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    ylabel = f"Δ {metric} vs {study.baseline}" if paired else metric
    for row in axes:
        row[0].set_ylabel(ylabel)
    axes.flat[0].legend(fontsize=8)
    conf = f"{study.confidence * 100:g}% CI"
    kind = "paired difference from the baseline" if paired else "mean"
    fig.suptitle(_wrap(f"{study.name}: {metric} ({kind}, {conf})", 50 * ncols), fontsize=11)
    fig.tight_layout()
    name = f"{'diff_' if paired else ''}{slug(metric)}__vs__{dim.slug}.png"
    return _save(fig, out_dir / name)


def _strategy_bars(summary: Summary, metric: str, out_dir: Path) -> Path:
    study = summary.study
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    p = summary.points[0]
    es = [summary.cells[(p.index, s, metric)] for s in study.strategies]
    ax.bar(range(len(es)), [e.mean for e in es],
           yerr=[0.0 if math.isnan(e.halfwidth) else e.halfwidth for e in es], capsize=4,
           color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(es)), list(study.strategies))
    ax.set_ylabel(metric)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(_wrap(f"{study.name}: {metric} ({study.confidence * 100:g}% CI)", 50),
                 fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir / f"{slug(metric)}__by_strategy.png")


def _heatmap(summary: Summary, metric: str, out_dir: Path) -> Path:
    study = summary.study
    dim = study.dimensions[0]
    grid = [[summary.cells[(p.index, s, metric)].mean for p in summary.points]
            for s in study.strategies]
    fig, ax = plt.subplots(figsize=(1.2 * len(summary.points) + 2.5,
                                    0.6 * len(study.strategies) + 1.8))
    finite = [v for row in grid for v in row if not math.isnan(v)]
    vmax = max(finite, default=1.0) or 1.0
    im = ax.imshow(grid, cmap="Reds", vmin=0, vmax=vmax, aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, "-" if math.isnan(v) else f"{v:.3g}", ha="center", va="center",
                    color="white" if v > 0.6 * vmax else "black", fontsize=9)
    ax.set_xticks(range(len(summary.points)),
                  [dim.level_label(i) for i in range(len(dim.levels))], rotation=25,
                  ha="right")
    ax.set_yticks(range(len(study.strategies)), list(study.strategies))
    ax.set_xlabel(dim.label)
    fig.colorbar(im, ax=ax, label=f"mean {metric}")
    ax.set_title(_wrap(f"{study.name}: mean {metric} per run", 60), fontsize=11)
    fig.tight_layout()
    return _save(fig, out_dir / f"matrix_{slug(metric)}.png")


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width))


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
