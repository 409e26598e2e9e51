"""PNG charts of evaluation results (matplotlib's Agg canvas; no display, no global pyplot state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lavakv.plotting import new_figure

MIB = 2**20


def plot_lines(series: dict[str, list[tuple[float, float]]], path: Path, *, title: str, xlabel: str, ylabel: str,
               references: dict[str, float] | None = None, log_x: bool = True) -> Path:
    """One line per series of ``(x, y)`` points, plus dashed horizontal reference lines (e.g. uncompressed)."""
    figure = new_figure(6.4, 4.2)
    ax = figure.add_subplot()
    styles = ["-", "--", ":", "-."]
    for i, (name, points) in enumerate(sorted(series.items())):  # 10 colours x 4 line styles: no repeats
        points = sorted(points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name,
                color=f"C{i % 10}", linestyle=styles[(i // 10) % len(styles)])
    for name, value in (references or {}).items():
        ax.axhline(value, color="grey", linestyle="--", linewidth=1, label=name)
    if log_x and any(points for points in series.values()):
        ax.set_xscale("log", base=2)
        xs = sorted({p[0] for points in series.values() for p in points})
        ax.set_xticks(xs)
        ax.set_xticklabels([f"{x:g}" for x in xs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


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
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def mib(values: Sequence[Any]) -> list[float]:
    """Bytes -> MiB."""
    return [v / MIB for v in values]
