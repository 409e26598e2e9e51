"""PNG charts of results, drawn with matplotlib's Agg canvas (no display, no global pyplot state).

matplotlib is an optional dependency (``pip install 'lavakv[plots]'``); it is imported when a chart is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

MIB = 2**20


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


def plot_demo_memory(rows: Sequence[dict[str, Any]], path: str | Path, *, title: str) -> Path:
    """Bar chart of resident KV memory per run, coloured by whether the answer was correct.

    Args:
        rows: one dict per run with ``label``, ``resident_kv_bytes``, ``uncompressed_kv_bytes`` and ``correct``.
        path: where to write the PNG (parent directories are created).
        title: the chart title.

    Returns:
        the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    figure.tight_layout()
    figure.savefig(path)
    return path
