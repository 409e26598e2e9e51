"""PNG plots of the benchmark results (benchmarks/results/*.json -> benchmarks/plots/*.png).

    python benchmarks/plots.py --results benchmarks/results --out benchmarks/plots
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MIB = 2**20


def figure(width: float = 7.5, height: float = 4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def load(results: Path, name: str) -> dict | None:
    path = results / name
    return json.loads(path.read_text()) if path.is_file() else None


def kfmt(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def memory_plot(sweep: dict, kvpress: dict | None, out: Path) -> Path:
    fig = figure()
    ax = fig.add_subplot(1, 1, 1)
    rows = sweep["rows"]
    lengths = sorted({r["tokens"] for r in rows})

    def series(rs, label_key, label):
        pts = sorted((r["tokens"], r["resident_kv_bytes"] / MIB) for r in rs if r[label_key] == label)
        return [p[0] for p in pts], [p[1] for p in pts]

    x, y = series(rows, "label", "full")
    ax.plot(x, y, "k-o", label="uncompressed (lavakv full)", linewidth=2)
    colors = {64: "tab:green", 128: "tab:blue", 512: "tab:purple"}
    for budget in sweep["budgets"]:
        x, y = series(rows, "label", f"lava@{budget}")
        ax.plot(x, y, "-s", color=colors.get(budget), label=f"lavakv lava B={budget} (every preset within 1%)")
    if kvpress:
        mem = kvpress["memory"]
        for press, style in (("snapkv", "x"), ("adakv-snapkv", "^"), ("pyramidkv", "v"), ("streamingllm", "+")):
            x, y = series(mem, "label", f"{press}@128")
            if x:
                ax.plot(x, y, style, linestyle=":", color="tab:red" if press == "adakv-snapkv" else "tab:orange",
                        markersize=8, label=f"kvpress {press} B=128"
                        + (" (masks: holds every entry)" if press == "adakv-snapkv" else ""))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths, [kfmt(n) for n in lengths])
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("resident KV after prefill (MiB, log)")
    ax.set_title(f"{sweep['model']}: KV bytes held after prefill")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = out / "memory_vs_length.png"
    fig.savefig(path)
    return path


def peak_plot(peak: dict, out: Path) -> Path:
    fig = figure(7.5, 4)
    ax = fig.add_subplot(1, 1, 1)
    rows = peak["rows"]
    lengths = sorted({r["tokens"] for r in rows})
    labels = list(dict.fromkeys(r["label"] for r in rows))
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        xs, ys = [], []
        for j, n in enumerate(lengths):
            r = next((r for r in rows if r["tokens"] == n and r["label"] == label), None)
            if r:
                xs.append(j + i * width)
                ys.append(r["peak_over_before_bytes"] / MIB)
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(lengths))], [f"{kfmt(n)} tokens" for n in lengths])
    ax.set_ylabel("peak RSS above the loaded model (MiB)")
    ax.set_title(f"{peak['model']}: peak process memory during one prefill (B={peak['budget']})")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "peak_memory.png"
    fig.savefig(path)
    return path


def overhead_plot(sweep: dict, kvpress: dict | None, out: Path, budget: int = 128) -> Path:
    fig = figure(8.5, 4.5)
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
    width = 0.8 / max(1, len(lengths))
    for i, n in enumerate(lengths):
        ys = [next((e[2] for e in entries if e[0] == name and e[1] == n), float("nan")) for name in names]
        ax.bar([j + i * width for j in range(len(names))], [(y - 1) * 100 for y in ys], width, label=kfmt(n))
    ax.axhline(5, color="red", linestyle="--", linewidth=1, label="goal: 5 %")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("compression time / uncompressed prefill (%)")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_title(f"{sweep['model']}: prefill overhead of compression (B={budget}, in-run)")
    ax.legend(fontsize=7, title="prompt", title_fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = out / "prefill_overhead.png"
    fig.savefig(path)
    return path


def decode_plot(sweep: dict, kvpress: dict | None, out: Path) -> Path:
    all_threads = sorted({r.get("threads", 0) for r in sweep["decode"]}, reverse=True)
    fig = figure(6.5 * len(all_threads), 4.8)
    for i, threads in enumerate(all_threads):
        ax = fig.add_subplot(1, len(all_threads), i + 1)
        rows = [r for r in sweep["decode"] if r.get("threads", 0) == threads]
        lengths = sorted({r["tokens"] for r in rows})
        for label in dict.fromkeys(r["label"] for r in rows):
            pts = sorted((r["tokens"], r["median_ms"], r["p10_ms"], r["p90_ms"]) for r in rows if r["label"] == label)
            err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            style = "k-o" if label == "full" else ("--" if "1024" in label else "-") + "s"
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=err, fmt=style, capsize=3,
                        label=f"lavakv {label}", linewidth=2 if label == "full" else 1)
        for r in (kvpress or {}).get("decode") or []:
            if r.get("threads", 0) == threads:
                suffix = "" if r["label"] == "full" else " (B=128)"
                ax.plot([r["tokens"]], [r["median_ms"]], "D", markersize=7, label=f"kvpress {r['label']}{suffix}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [kfmt(n) for n in lengths])
        ax.set_xlabel("prompt tokens before decoding")
        ax.set_ylabel("ms per decoded token (median, p10-p90)")
        ax.set_title(f"{sweep['model']}: decode step, {threads} torch thread(s)", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path = out / "decode_vs_length.png"
    fig.savefig(path)
    return path


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
