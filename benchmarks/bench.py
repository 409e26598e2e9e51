"""The benchmark suite (`make bench`): every step in sequence, then plots and benchmarks/RESULTS.md.

Steps run one after another (never two measurements at once) and each is its own process. The wall time of
each step and the machine's load average are recorded in results/bench_run.json for the report.

    python benchmarks/bench.py                # full suite -> benchmarks/results, benchmarks/plots, RESULTS.md
    python benchmarks/bench.py --quick        # smoke run (a few minutes) -> /tmp/lavakv-bench-quick
    python benchmarks/bench.py --only sweep,report
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def steps(args, results: Path, plots: Path, report: Path, ids: Path, kvpy: str, model_dir: Path) -> list[tuple]:
    py, m, q = sys.executable, args.model, args.quick
    b = "benchmarks"
    return [
        ("ids", [py, f"{b}/prompts.py", "--model", m, "--tokens", "2048" if q else "16384", "--out", str(ids)]),
        ("sweep", [py, f"{b}/sweep.py", "--model", m, "--out", str(results / f"sweep_{m}.json")]
         + (["--tokens", "1024,2048", "--budgets", "64,128", "--decode-tokens", "2048", "--decode-steps", "5"]
            if q else [])),
        ("kvpress", [kvpy, f"{b}/kvpress_bench.py", "--model-dir", str(model_dir), "--ids", str(ids),
                     "--model-name", m, "--out", str(results / f"kvpress_{m}.json")]
         + (["--memory-tokens", "1024,2048", "--budgets", "64,128", "--validate-tokens", "1024",
             "--e2e-tokens", "2048", "--e2e-rounds", "1", "--decode-tokens", "2048", "--decode-steps", "5"]
            if q else ["--e2e-rounds", "2"])),
        ("prefill-e2e", [py, f"{b}/presets.py", "--model", m, "--budget", "128",
                         "--out", str(results / f"prefill_{m}_128.json")]
         + (["--tokens", "2048", "--methods", "lava,snapkv", "--repeats", "1"] if q else
            ["--tokens", "2048,4096,8192", "--methods", "lava,snapkv|lava,snapkv|lava", "--repeats", "3,2,2"])),
        ("peak", [py, f"{b}/peak_memory.py", "--model", m, "--out", str(results / f"peak_{m}.json"), "--runs"]
         + (["2048:nocache,full,lava"] if q else ["8192:nocache,full,lava", "16384:nocache,full,lava"])),
        ("decode-kernel", [py, f"{b}/decode_kernel.py", "--out", str(results / "decode_kernel.json")]
         + (["--repeats", "20"] if q else [])),
        ("decode-kernel-1thread", [py, f"{b}/decode_kernel.py", "--threads", "1",
                                   "--out", str(results / "decode_kernel_1thread.json")]
         + (["--repeats", "20"] if q else [])),
        *([("decode-kernel-cuda", [py, f"{b}/decode_kernel.py", "--device", "cuda", "--dtype", "bfloat16",
                                   "--out", str(results / "decode_kernel_cuda.json")]
            + (["--repeats", "20"] if q else []))] if cuda_available() else []),
        ("profile", [py, f"{b}/profile_compression.py", "--model", m, "--tokens", "2048" if q else "4096",
                     "--out", str(results / f"profile_{m}.json")]),
        ("quality", [py, f"{b}/quality_vs_kvpress.py", "--out", str(results / "quality_vs_kvpress.json")]
         + (["--model", m, "--tasks", "ruler:vt", "--length", "600", "--samples", "1", "--ratios", "0.5"]
            if q else [])),
        ("plots", [py, f"{b}/plots.py", "--model", m, "--results", str(results), "--out", str(plots)]),
        ("report", [py, f"{b}/report.py", "--model", m, "--results", str(results), "--plots", str(plots),
                    "--out", str(report)]),
    ]


def cuda_available() -> bool:
    """Whether this machine can run the CUDA decode-kernel step (flash-attention varlen if installed)."""
    import torch

    return torch.cuda.is_available()


def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all cores busy over ``seconds`` (from /proc/stat); the suite is idle while this samples."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_for_quiet(threshold: float, max_wait: float) -> tuple[float, float]:
    """Wait (up to ``max_wait`` s) until other processes keep less than ``threshold`` of the CPU busy.

    Returns (seconds waited, busy fraction when the step starts). Other jobs may still start mid-step: every
    timing is a side-by-side ratio anyway; this only avoids starting a step in the middle of someone's burst.
    """
    start = time.perf_counter()
    busy = cpu_busy()
    while busy > threshold and time.perf_counter() - start < max_wait:
        busy = cpu_busy(5.0)
    return time.perf_counter() - start, busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quick", action="store_true", help="small sizes, written under /tmp/lavakv-bench-quick")
    parser.add_argument("--only", default="", help="comma-separated step names (default: all)")
    parser.add_argument("--quiet-below", type=float, default=0.25,
                        help="before each measuring step, wait until other processes use less than this fraction "
                             "of the CPU")
    parser.add_argument("--quiet-wait", type=float, default=300, help="longest wait for quiet per step, seconds")
    args = parser.parse_args()
    if args.quick:
        root = Path(tempfile.gettempdir()) / "lavakv-bench-quick"
        results, plots, report = root / "results", root / "plots", root / "RESULTS.md"
    else:
        results, plots, report = HERE / "results", HERE / "plots", HERE / "RESULTS.md"
    results.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    from lavakv.models import converted_dir, load_model

    hf_logging.disable_progress_bar()
    load_model(args.model)  # converts on first use, so the kvpress venv finds the directory
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKENIZERS_PARALLELISM": "false"}
    only = set(filter(None, args.only.split(",")))
    started, t0, load0 = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.perf_counter(), os.getloadavg()
    kvpy = "python"
    if not only or "kvpress" in only:
        done = subprocess.run(["bash", str(HERE / "kvpress_env.sh")], capture_output=True, text=True, env=env,
                              check=False)
        if done.returncode != 0:
            sys.exit(f"kvpress venv setup failed:\n{done.stderr[-3000:]}")
        kvpy = done.stdout.strip().splitlines()[-1]
    record = []
    with tempfile.TemporaryDirectory() as tmp:
        ids = Path(tmp) / "ids.pt"
        for name, cmd in steps(args, results, plots, report, ids, kvpy, converted_dir(args.model)):
            if only and name not in only and not (name == "ids" and only & {"kvpress"}):
                continue
            shown_python = {sys.executable: "python", kvpy: "benchmarks/.kvpress-venv/bin/python"}
            shown = shlex.join([shown_python.get(cmd[0], cmd[0]), *cmd[1:]])
            waited, busy = (0.0, None) if name in ("ids", "plots", "report") else wait_for_quiet(
                args.quiet_below, args.quiet_wait)
            print(f"[bench] {name}: {shown}" + (f"  (waited {waited:.0f} s for quiet; others' CPU use "
                                                f"{busy:.0%})" if busy is not None else ""), flush=True)
            start = time.perf_counter()
            subprocess.run(cmd, cwd=REPO, env=env, check=True)
            record.append({"name": name, "command": shown, "seconds": time.perf_counter() - start,
                           "waited_for_quiet_s": waited, "others_cpu_busy_at_start": busy})
            if name == "plots":  # the report reads the run record: write it before the report step
                write_run(results, args, started, t0, load0, record)
    write_run(results, args, started, t0, load0, record)
    if not only or "report" in only:  # re-render with the final record
        subprocess.run(steps(args, results, plots, report, Path(), kvpy, Path())[-1][1], cwd=REPO, env=env, check=True)
    print(f"[bench] done in {(time.perf_counter() - t0) / 60:.1f} min -> {report}")


def write_run(results: Path, args, started: str, t0: float, load0, record: list[dict]) -> None:
    """Record this run's steps; with --only, the steps not re-run keep their earlier record (marked as such)."""
    path = results / "bench_run.json"
    command = "python benchmarks/bench.py" + (" --quick" if args.quick else "")
    run = {"command": command, "started": started, "total_s": time.perf_counter() - t0,
           "loadavg_start": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
           "steps": record}
    if args.only and path.is_file():
        previous = json.loads(path.read_text())
        fresh = {r["name"] for r in record}
        kept = [{**r, "run_started": r.get("run_started", previous["started"])} for r in previous["steps"]
                if r["name"] not in fresh]
        order = [name for name, _ in steps(args, results, Path(), Path(), Path(), "", Path())]
        reruns = [r for r in previous.get("reruns", []) if r["started"] != started]
        run = {**previous, "reruns": [*reruns, {"only": args.only, "started": started, "total_s": run["total_s"]}],
               "steps": sorted(kept + [{**r, "run_started": started} for r in record],
                               key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))}
    path.write_text(json.dumps(run, indent=2))


if __name__ == "__main__":
    main()
