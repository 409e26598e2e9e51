"""``lavakv eval`` / ``lavakv report`` through their argparse subcommands, on a tiny model; plots written."""

from __future__ import annotations

import argparse
import json

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
    assert _run(["eval", "--task", "ruler:vt", "--lengths", "1200", *common]) == 0
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
