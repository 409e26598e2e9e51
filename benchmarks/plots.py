"""PNG plots of the benchmark results (benchmarks/results/*.json -> benchmarks/plots/*.png).

The figures compose :mod:`lavakv.plotting`'s helpers (figure setup, lines, grouped bars); only what each
benchmark figure shows is decided here.

    python benchmarks/plots.py --results benchmarks/results --out benchmarks/plots
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lavakv.plotting import MIB, draw_grouped_bars, draw_lines, log2_x, new_figure, save


def load(results: Path, name: str) -> dict | None:
    path = results / name
    return json.loads(path.read_text()) if path.is_file() else None


def kfmt(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def memory_plot(sweep: dict, kvpress: dict | None, out: Path) -> Path:
    fig = new_figure(7.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    rows = sweep["rows"]
    lengths = sorted({r["tokens"] for r in rows})

    def points(rs, label):
        return [(r["tokens"], r["resident_kv_bytes"] / MIB) for r in rs if r["label"] == label]

    series = {"uncompressed (lavakv full)": points(rows, "full")}
    styles = {"uncompressed (lavakv full)": {"color": "k", "marker": "o", "linewidth": 2}}
    colors = {64: "tab:green", 128: "tab:blue", 512: "tab:purple"}
    for i, budget in enumerate(sweep["budgets"]):
        name = f"lavakv lava B={budget} (every preset within 1%)"
        series[name] = points(rows, f"lava@{budget}")
        styles[name] = {"color": colors.get(budget, f"C{i + 4}"), "marker": "s"}
    if kvpress:
        for press, marker in (("snapkv", "x"), ("adakv-snapkv", "^"), ("pyramidkv", "v"), ("streamingllm", "+")):
            found = points(kvpress["memory"], f"{press}@128")
            if found:
                name = f"kvpress {press} B=128" + (" (masks: holds every entry)" if press == "adakv-snapkv" else "")
                series[name] = found
                styles[name] = {"marker": marker, "linestyle": ":", "markersize": 8,
                                "color": "tab:red" if press == "adakv-snapkv" else "tab:orange"}
    draw_lines(ax, series, styles=styles)
    ax.set_yscale("log")
    log2_x(ax, lengths, [kfmt(n) for n in lengths])
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("resident KV after prefill (MiB, log)")
    ax.set_title(f"{sweep['model']}: KV bytes held after prefill")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return save(fig, out / "memory_vs_length.png")


def peak_plot(peak: dict, out: Path) -> Path:
    fig = new_figure(7.5, 4)
    ax = fig.add_subplot(1, 1, 1)
    rows = peak["rows"]
    lengths = sorted({r["tokens"] for r in rows})
    labels = list(dict.fromkeys(r["label"] for r in rows))
    series = {label: [next((r["peak_over_before_bytes"] / MIB for r in rows if r["tokens"] == n
                            and r["label"] == label), None) for n in lengths] for label in labels}
    draw_grouped_bars(ax, [f"{kfmt(n)} tokens" for n in lengths], series, value_format="%.0f")
    ax.set_ylabel("peak RSS above the loaded model (MiB)")
    ax.set_title(f"{peak['model']}: peak process memory during one prefill (B={peak['budget']})")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return save(fig, out / "peak_memory.png")


def overhead_plot(sweep: dict, kvpress: dict | None, out: Path, budget: int = 128) -> Path:
    fig = new_figure(8.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    lengths = [n for n in sorted({r["tokens"] for r in sweep["rows"]}) if n >= 2048]
    entries = []
    for r in sweep["rows"]:
        if r["budget"] == budget and r["tokens"] in lengths:
            entries.append(("lavakv " + r["method"], r["tokens"], r["overhead_ratio"]))
    if kvpress:
        for r in kvpress["memory"]:
            if r["budget"] == budget and r["tokens"] in lengths:
                entries.append(("kvpress " + r["press"], r["tokens"], r["overhead_ratio"]))
    names = list(dict.fromkeys(e[0] for e in entries))
    series = {kfmt(n): [next(((e[2] - 1) * 100 for e in entries if e[0] == name and e[1] == n), None)
                        for name in names] for n in lengths}
    draw_grouped_bars(ax, names, series, rotation=60, fontsize=7)
    ax.axhline(5, color="red", linestyle="--", linewidth=1, label="goal: 5 %")
    ax.set_ylabel("compression time / uncompressed prefill (%)")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_title(f"{sweep['model']}: prefill overhead of compression (B={budget}, in-run)")
    ax.legend(fontsize=7, title="prompt", title_fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    return save(fig, out / "prefill_overhead.png")


def decode_plot(sweep: dict, kvpress: dict | None, out: Path) -> Path:
    all_threads = sorted({r.get("threads", 0) for r in sweep["decode"]}, reverse=True)
    fig = new_figure(6.5 * len(all_threads), 4.8)
    for i, threads in enumerate(all_threads):
        ax = fig.add_subplot(1, len(all_threads), i + 1)
        rows = [r for r in sweep["decode"] if r.get("threads", 0) == threads]
        lengths = sorted({r["tokens"] for r in rows})
        series, styles = {}, {}
        for label in dict.fromkeys(r["label"] for r in rows):
            name = f"lavakv {label}"
            series[name] = [(r["tokens"], r["median_ms"], r["p10_ms"], r["p90_ms"]) for r in rows
                            if r["label"] == label]
            styles[name] = ({"color": "k", "marker": "o", "linewidth": 2} if label == "full" else
                            {"marker": "s", "linestyle": "--" if "1024" in label else "-", "linewidth": 1})
        for r in (kvpress or {}).get("decode") or []:
            if r.get("threads", 0) == threads:
                name = f"kvpress {r['label']}" + ("" if r["label"] == "full" else " (B=128)")
                series.setdefault(name, []).append((r["tokens"], r["median_ms"]))
                styles[name] = {"marker": "D", "markersize": 7, "linestyle": "none"}
        draw_lines(ax, series, styles=styles)
        log2_x(ax, lengths, [kfmt(n) for n in lengths])
        ax.set_xlabel("prompt tokens before decoding")
        ax.set_ylabel("ms per decoded token (median, p10-p90)")
        ax.set_title(f"{sweep['model']}: decode step, {threads} torch thread(s)", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    return save(fig, out / "decode_vs_length.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/plots"))
    parser.add_argument("--model", default="smollm2-135m")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sweep = load(args.results, f"sweep_{args.model}.json")
    kvpress = load(args.results, f"kvpress_{args.model}.json")
    peak = load(args.results, f"peak_{args.model}.json")
    made = []
    if sweep:
        made += [memory_plot(sweep, kvpress, args.out), overhead_plot(sweep, kvpress, args.out)]
        if sweep["decode"]:
            made.append(decode_plot(sweep, kvpress, args.out))
    if peak:
        made.append(peak_plot(peak, args.out))
    for path in made:
        print(f"[plots] wrote {path}")


if __name__ == "__main__":
    main()
