"""PNG charts, drawn with matplotlib's Agg canvas (no display, no global pyplot state): the one plotting module.

Figure setup (:func:`new_figure`, :func:`save`, :func:`log2_x`), axes-level drawers (:func:`draw_lines`,
:func:`draw_grouped_bars`) and the charts built from them: ``lavakv report``'s score / memory against budget
(:func:`plot_lines`) and needle heatmaps (:func:`plot_heatmap`), ``lavakv demo``'s memory bars
(:func:`plot_demo_memory`). The benchmark figures (``benchmarks/plots.py``) compose the same helpers.

matplotlib is an optional dependency (``pip install 'lavakv[plots]'``); it is imported when a chart is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MIB = 2**20
LINE_STYLES = ("-", "--", ":", "-.")


# -- figure setup --------------------------------------------------------------------------------------------------
def new_figure(width: float, height: float, dpi: int = 120):
    """A matplotlib ``Figure`` on the Agg canvas (no display); a clear ImportError when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("drawing charts needs matplotlib: pip install 'lavakv[plots]'") from error
    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    return figure


def save(figure, path: str | Path) -> Path:
    """Lay ``figure`` out tightly and write it as a PNG at ``path`` (parent directories created); returns the path."""
    path = Path(path)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def log2_x(ax, ticks: Sequence[float], labels: Sequence[str] | None = None) -> None:
    """A base-2 logarithmic x axis with a tick at each of ``ticks`` (labelled ``f"{x:g}"`` unless ``labels``)."""
    ax.set_xscale("log", base=2)
    ticks = list(ticks)
    ax.set_xticks(ticks)
    ax.set_xticklabels(list(labels) if labels is not None else [f"{x:g}" for x in ticks])


# -- axes-level drawers --------------------------------------------------------------------------------------------
def draw_lines(ax, series: Mapping[str, Sequence[tuple[float, ...]]], *,
               styles: Mapping[str, Mapping[str, Any]] | None = None,
               references: Mapping[str, float | tuple[float, float, float]] | None = None) -> None:
    """One line per series, in the mapping's order, points sorted by x; dashed grey horizontal references.

    Args:
        series: name (the legend label) -> points ``(x, y)``, or ``(x, y, low, high)`` for an error bar from
            ``low`` to ``high`` (e.g. a 95 % confidence interval); a series draws error bars when all its points
            have them.
        styles: name -> matplotlib keyword arguments overriding the default style (colour ``C0``..``C9``, then the
            next line style, so 40 series never repeat; marker ``o``).
        references: label -> y of a dashed grey horizontal line (e.g. the uncompressed value), or ``(y, low, high)``
            for the line with a light grey band from ``low`` to ``high``.
    """
    for i, (name, points) in enumerate(series.items()):
        points = sorted(points)
        style: dict[str, Any] = {"marker": "o", "color": f"C{i % 10}",
                                 "linestyle": LINE_STYLES[(i // 10) % len(LINE_STYLES)]}
        style.update((styles or {}).get(name, {}))
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        if points and all(len(p) == 4 for p in points):
            yerr = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
            ax.errorbar(xs, ys, yerr=yerr, capsize=3, label=name, **style)
        else:
            ax.plot(xs, ys, label=name, **style)
    for name, value in (references or {}).items():
        if isinstance(value, tuple):
            value, low, high = value
            ax.axhspan(low, high, color="grey", alpha=0.15, linewidth=0)
        ax.axhline(value, color="grey", linestyle="--", linewidth=1, label=name)


def draw_grouped_bars(ax, groups: Sequence[str], series: Mapping[str, Sequence[float]], *,
                      value_format: str | None = None, rotation: float = 0, fontsize: float | None = None) -> None:
    """Bars grouped along x: one group per entry of ``groups``, one bar per series in each group.

    Args:
        groups: the group labels (x ticks).
        series: name (the legend label) -> one value per group; NaN (or None) draws no bar.
        value_format: ``bar_label`` format of a label above each bar (e.g. ``"%.0f"``); None for none.
        rotation: x tick label rotation in degrees (right-aligned when rotated).
        fontsize: x tick label font size.
    """
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        present = [(j, v) for j, v in enumerate(values) if v is not None and not math.isnan(v)]
        bars = ax.bar([j + i * width for j, _ in present], [v for _, v in present], width, label=name)
        if value_format is not None:
            ax.bar_label(bars, fmt=value_format, fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))], list(groups), rotation=rotation,
                  ha="right" if rotation else "center", fontsize=fontsize)


# -- charts --------------------------------------------------------------------------------------------------------
def plot_lines(series: Mapping[str, Sequence[tuple[float, ...]]], path: Path, *, title: str, xlabel: str,
               ylabel: str, references: Mapping[str, float | tuple[float, float, float]] | None = None,
               log_x: bool = True) -> Path:
    """One line per series of ``(x, y)`` or ``(x, y, low, high)`` points (sorted by name; error bars as in
    :func:`draw_lines`), plus dashed horizontal reference lines (with a band for ``(y, low, high)``)."""
    figure = new_figure(6.4, 4.2)
    ax = figure.add_subplot()
    draw_lines(ax, dict(sorted(series.items())), references=references)
    if log_x and any(points for points in series.values()):
        log2_x(ax, sorted({p[0] for points in series.values() for p in points}))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(figure, path)


def plot_heatmap(grid: dict[str, dict[str, float]], path: Path, *, title: str) -> Path:
    """Needle heatmap: haystack length (columns) x needle depth (rows), score 0-100, red-yellow-green."""
    lengths = sorted(grid, key=float)
    depths = sorted({d for row in grid.values() for d in row}, key=float)
    values = [[grid[length].get(depth, float("nan")) for length in lengths] for depth in depths]
    figure = new_figure(max(4.0, 1.0 + 0.9 * len(lengths)), max(3.0, 1.2 + 0.45 * len(depths)))
    ax = figure.add_subplot()
    image = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)))
    ax.set_xticklabels(lengths, fontsize=8)
    ax.set_yticks(range(len(depths)))
    ax.set_yticklabels([f"{100 * float(d):.0f}%" for d in depths], fontsize=8)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("haystack tokens")
    ax.set_ylabel("needle depth")
    ax.set_title(title, fontsize=9)
    figure.colorbar(image, ax=ax, label="score")
    return save(figure, path)


def plot_demo_memory(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str) -> Path:
    """Bar chart of resident KV memory per run, coloured by whether the answer was correct.

    Args:
        rows: one dict per run with ``label``, ``resident_kv_bytes``, ``uncompressed_kv_bytes`` and ``correct``.
        path: where to write the PNG (parent directories are created).
        title: the chart title.

    Returns:
        the path written.
    """
    figure = new_figure(max(6.0, 0.7 * len(rows) + 2.0), 4.5)
    ax = figure.add_subplot()
    labels = [str(r["label"]) for r in rows]
    mib = [r["resident_kv_bytes"] / MIB for r in rows]
    colours = ["#2ca02c" if r["correct"] else "#d62728" for r in rows]
    bars = ax.bar(range(len(rows)), mib, color=colours)
    for bar, value, row in zip(bars, mib, rows, strict=True):
        mark = "correct" if row["correct"] else "wrong"
        ax.annotate(f"{value:.2f}\n{mark}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                    fontsize=7, xytext=(0, 2), textcoords="offset points")
    uncompressed = max((r["uncompressed_kv_bytes"] for r in rows), default=0) / MIB
    if uncompressed:
        ax.axhline(uncompressed, color="grey", linestyle="--", linewidth=1, label="uncompressed")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("resident KV cache (MiB)")
    ax.set_ylim(0, max(mib + [uncompressed]) * 1.25 or 1.0)
    ax.set_title(title, fontsize=10)
    return save(figure, path)
