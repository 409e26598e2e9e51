"""Bad input to the ``lavakv`` command: one ``lavakv: error: ...`` line naming the problem and the fix (exit 2),
found before the expensive work (loading the model, or prefilling once it is loaded)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_cli import _one_error_line
from test_eval_support import tiny_eval_pair
from test_generation import tiny_pair

import lavakv
import lavakv.bench
import lavakv.eval.runner
from lavakv.cli import app as cli
from lavakv.cli.arguments import check_model_request, check_out_dir, context_length, read_text_file
from lavakv.eval.lock import LOCK_NAME, eval_lock
from lavakv.models import loading as models

KNOWN = ["smollm2-135m"]


@pytest.fixture
def tiny(monkeypatch):
    """``lavakv.cli`` loads a tiny chat-capable model (1024 positions); returns the names asked for."""
    asked: list[str] = []
    pair = tiny_pair(chat=True)

    def fake_load_model(name, *, dtype, device):
        asked.append(name)
        return pair

    monkeypatch.setattr(cli, "load_model", fake_load_model)
    return asked


def _no_prefill(*args, **kwargs):
    raise AssertionError("the check must come before any prefill")


@pytest.fixture
def no_prefill(monkeypatch):
    """Fail (internal error, exit 1) if generate / demo / bench / eval reach their prefill."""
    monkeypatch.setattr(cli, "generate", _no_prefill)
    monkeypatch.setattr(cli, "generate_many", _no_prefill)
    monkeypatch.setattr(lavakv.bench, "measure", _no_prefill)
    monkeypatch.setattr(lavakv.eval.runner, "run_eval", _no_prefill)


@pytest.fixture
def tiny_eval(monkeypatch):
    """``lavakv eval`` loads a tiny model (1024 positions); returns the names asked for."""
    pair = tiny_eval_pair(chat=True)
    asked: list[str] = []

    def fake_load_model(name, *, dtype, device):
        asked.append(name)
        return pair

    monkeypatch.setattr(models, "load_model", fake_load_model)
    return asked


# -- 1. --out is checked before the work ----------------------------------------------------------------------------
def _out_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    taken = tmp_path / "taken"
    (taken / "demo_results.json").mkdir(parents=True)
    (taken / "bench_results.json").mkdir(parents=True)
    return {
        "file": (a_file, "is a file, not a directory"),
        "under a file": (a_file / "sub" / "dir", "cannot be created because"),
        "result name is a directory": (taken, "is a directory, so the results cannot be written there"),
    }


@pytest.mark.parametrize("case", ["file", "under a file", "result name is a directory"])
@pytest.mark.parametrize("command", [["demo", "--tokens", "200"], ["bench", "--tokens", "120"]])
def test_demo_and_bench_check_out_before_loading(command, case, tiny, tmp_path, capsys):
    out, message = _out_cases(tmp_path)[case]
    assert cli.main([*command, "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "--out" in line and message in line and "give --out a directory you can write to" in line
    assert tiny == []  # nothing was loaded


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_out_is_rejected(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="is not writable"):
            check_out_dir(locked / "new")
        with pytest.raises(ValueError, match="not writable"):
            check_out_dir(locked)
    finally:
        locked.chmod(0o700)


def test_out_that_can_be_made_passes_and_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_out_dir(target) == target
    assert not (tmp_path / "a").exists()
    (tmp_path / "existing").mkdir()
    assert check_out_dir(tmp_path / "existing", files=["demo_results.json"]) == tmp_path / "existing"


# -- 2. lengths against the model's context length, after loading and before any prefill -----------------------------
def test_generate_prompt_plus_new_tokens_beyond_context(tiny, no_prefill, capsys):
    # the tiny model has 1024 positions; 1000 characters are at least 1000 prompt tokens
    code = cli.main(["generate", "--method", "full", "--prompt", "x" * 1000, "--max-new-tokens", "100"])
    assert code == 2
    line = _one_error_line(capsys)
    assert "context length of 1024 tokens" in line and "--max-new-tokens adds 100" in line
    assert "shorten the context or lower --max-new-tokens" in line
    assert tiny == ["smollm2-135m"]  # loaded (the config is needed), never prefilled


def test_demo_tokens_beyond_context(tiny, no_prefill, tmp_path, capsys):
    assert cli.main(["demo", "--tokens", "1020", "--max-new-tokens", "16", "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    assert "1020 tokens" in line and "adds 16" in line and "1024" in line and "lower --tokens" in line
    assert not (tmp_path / "o").exists()


def test_bench_tokens_beyond_context(tiny, no_prefill, tmp_path, capsys):
    assert cli.main(["bench", "--tokens", "500,1020", "--decode-steps", "3", "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    assert "1020 tokens" in line and "adds 5" in line and "1024" in line and "lower --tokens or --decode-steps" in line


@pytest.mark.parametrize(("args", "expected"), [
    (["--task", "needle", "--lengths", "250,1020"], "needle at --lengths 1020 is 1020 tokens and the generation"),
    (["--task", "needle"], "needle at its default length (no --lengths given) 1024"),
    (["--task", "fidelity", "--lengths", "1000", "--continuation", "64"], "--continuation adds 64"),
    (["--task", "code", "--lengths", "1000", "--max-new-tokens", "30"], "the generation (--max-new-tokens) adds 30"),
    (["--task", "multiquestion", "--lengths", "1200"], "multiquestion/keys at --lengths 1200 is 1200 tokens"),
    (["--task", "multiquestion"], "multiquestion/keys at its default length (no --lengths given) 4096"),
])
def test_eval_lengths_beyond_context(args, expected, tiny_eval, no_prefill, tmp_path, capsys):
    assert cli.main(["eval", *args, "--methods", "full", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    line = _one_error_line(capsys)
    assert expected in line and "context length of 1024 tokens" in line and "pass smaller --lengths" in line
    assert tiny_eval == ["smollm2-135m"]


def test_context_length_reads_the_text_config():
    text = SimpleNamespace(max_position_embeddings=8192)
    model = SimpleNamespace(config=SimpleNamespace(get_text_config=lambda: text))
    assert context_length(model) == 8192
    assert context_length(SimpleNamespace(config=SimpleNamespace(text_config=text))) == 8192
    assert context_length(SimpleNamespace(config=SimpleNamespace())) is None


# -- 3. context files: binary, non-UTF-8, empty ------------------------------------------------------------------------
@pytest.mark.parametrize(("data", "expected"), [
    ("café au lait".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 3); convert it with iconv"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is a binary file, not text (NUL byte at offset 8)"),
    ("hello".encode("utf-16"), "is UTF-16 text, not UTF-8; convert it with `iconv -f UTF-16 -t UTF-8"),
    (b"", "is empty: give a file with the text to answer from"),
    (b" \n\t\n", "is empty"),
])
def test_bad_context_file_names_the_file_and_the_fix(data, expected, tiny, tmp_path, capsys):
    path = tmp_path / "context.txt"
    path.write_bytes(data)
    assert cli.main(["generate", "--method", "full", "--context-file", str(path)]) == 2
    line = _one_error_line(capsys)
    assert expected in line and str(path) in line
    assert tiny == []


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffKyoto has parks.".encode())
    assert read_text_file(path, "context file", "give text") == "Kyoto has parks."


def test_eval_haystack_file_must_be_utf8(tiny_eval, tmp_path, capsys):
    path = tmp_path / "hay.txt"
    path.write_bytes(b"ok \xff\xfe broken")
    assert cli.main(["eval", "--task", "needle", "--haystack-file", str(path), "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    assert "--haystack-file" in line and "byte 0xff at offset 3" in line and "iconv" in line
    assert tiny_eval == []


# -- 4. a missing local --model path ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["./no/such/model", "~/no-such-lavakv-model", "/no/such/model", "a/b/c", "m.gguf",
                                  "..\\models\\x", "owner/na me"])
def test_missing_model_path_says_no_such_directory(name):
    with pytest.raises(ValueError, match="no such (directory|file): ") as info:
        check_model_request(name, "cpu", KNOWN)
    assert "hub" not in str(info.value)


def test_missing_path_under_an_existing_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ValueError, match="no such directory: models/qwen"):
        check_model_request("models/qwen", "cpu", KNOWN)
    assert check_model_request("Qwen/Qwen2.5-0.5B", "cpu", KNOWN) == "Qwen/Qwen2.5-0.5B"  # a hub id passes


def test_existing_model_paths(tmp_path):
    assert check_model_request(str(tmp_path), "cpu", KNOWN) == str(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a model directory"):
        check_model_request(str(tmp_path / "notes.txt"), "cpu", KNOWN)
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        check_model_request("nope", "cpu", KNOWN)


def test_cli_missing_model_directory_before_loading(tiny, capsys):
    assert cli.main(["generate", "--method", "full", "--prompt", "hi", "--model", "./no/such/dir"]) == 2
    assert "no such directory: ./no/such/dir" in _one_error_line(capsys)
    assert tiny == []


# -- 5. --threads ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threads", ["0", "-2"])
def test_bench_threads_below_one_is_a_usage_error(threads, tiny, tmp_path, capsys):
    assert cli.main(["bench", "--threads", threads, "--out", str(tmp_path / "o")]) == 2
    assert f"--threads must be >= 1, got {threads}" in _one_error_line(capsys)
    assert tiny == []


@pytest.mark.parametrize("name", ["kvzip", "lava-kvzip"])
def test_bench_refuses_a_method_that_cannot_share_its_prefill_before_loading(name, tiny, tmp_path, capsys):
    assert cli.main(["bench", "--methods", name, "--budgets", "64", "--out", str(tmp_path / "o")]) == 2
    assert f"{name} cannot share it" in _one_error_line(capsys)
    assert tiny == []


def test_bench_measure_refuses_chunked_and_reconstruction_methods():
    model, _ = tiny_pair()
    ids = torch.arange(1, 41)[None]
    for m, why in ((lavakv.method("snapkv", budget=16, window=4, chunk_size=16), "prefills in chunks"),
                   (lavakv.method("kvzip", budget=16, window=4), "reconstruction pass")):
        with pytest.raises(ValueError, match=why):
            lavakv.bench.measure(model, ids, [m], decode_steps=1)


def test_bench_threads_default_is_not_given():
    args = cli.build_parser().parse_args(["bench"])
    assert args.threads is None


@pytest.mark.parametrize("threads", ["0", "-2"])
def test_eval_threads_below_one_is_a_usage_error_before_loading(threads, tiny_eval, no_prefill, tmp_path, capsys):
    argv = ["eval", "--task", "needle", "--threads", threads, "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    assert f"--threads must be >= 1, got {threads}" in _one_error_line(capsys)
    assert tiny_eval == []


def test_eval_threads_sets_torch_threads_and_is_recorded(tiny_eval, tmp_path, monkeypatch):
    """``lavakv eval --threads N`` runs with N torch threads; each run's provenance.json says so."""
    import torch

    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1
    out = tmp_path / "o"
    try:
        assert cli.main(["eval", "--task", "needle", "--methods", "full", "--lengths", "250", "--depths", "0",
                         "--samples", "1", "--max-new-tokens", "2", "--threads", str(wanted), "--out", str(out),
                         "--no-progress"]) == 0
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    assert json.loads((run / "provenance.json").read_text())["threads"] == wanted


# -- budgets and windows: one line, in command-line terms --------------------------------------------------------------
@pytest.mark.parametrize(("args", "expected"), [
    (["generate", "--method", "lava", "--budget", "16", "--window", "32", "--prompt", "hi"],
     "use --budget >= 32 or a smaller --window"),
    (["generate", "--method", "lava", "--budget", "64", "--window", "0", "--prompt", "hi"], "window must be >= 1"),
    (["demo", "--budgets", "8"], "use --budgets >= 32 or a smaller --window"),
    (["generate", "--method", "lava", "--compression-ratio", "1.5", "--prompt", "hi"], "compression"),
])
def test_budget_and_window_errors_are_one_line(args, expected, tiny, capsys):
    assert cli.main(args) == 2
    assert expected in _one_error_line(capsys)
    assert tiny == []


# -- 6. lavakv report names a damaged results file ---------------------------------------------------------------------
def _fake_run(root: Path) -> Path:
    run = root / "needle__m__full__query-aware__0123456789"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"task": "needle", "model": "m", "query_mode": "query-aware",
                                                 "method": {"name": "full"}, "label": "full"}))
    (run / "metrics.json").write_text(json.dumps({"samples": 2, "score": 50.0, "score_name": "exact"}))
    (run / "predictions.jsonl").write_text('{"id": "a"}\n{"id": "b"}\n')
    return run


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("metrics.json", '{"samples": 2, "score": ', "not valid JSON"),
    ("config.json", "[1, 2]", "a JSON list, not an object"),
    ("config.json", '{"task": "needle"}', "no 'model'"),
    ("predictions.jsonl", '{"id": "a"}\nnot json\n{"id": "b"}\n', "line 2 is not JSON"),
    ("metrics.json", b"\xff\xfe{}", "not UTF-8 text"),
])
def test_report_names_the_damaged_file(name, content, expected, tmp_path, capsys):
    run = _fake_run(tmp_path / "results")
    path = run / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert cli.main(["report", str(tmp_path / "results"), "--plots", str(tmp_path / "plots")]) == 2
    line = _one_error_line(capsys)
    assert f"{path}: damaged results file" in line and expected in line and "rerun `lavakv eval`" in line


def test_report_counts_a_torn_last_line_without_rewriting(tmp_path, capsys):
    run = _fake_run(tmp_path / "results")
    torn = '{"id": "a"}\n{"id": "b"}\n{"id": "c", "te'
    (run / "predictions.jsonl").write_text(torn)
    (run / "metrics.json").unlink()  # unfinished: the table shows the predictions count
    assert cli.main(["report", str(run), "--plots", str(tmp_path / "plots")]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("needle"))
    assert row.split()[5] == "2" and "unfinished" in row
    assert (run / "predictions.jsonl").read_text() == torn  # report only reads


def test_report_plots_dir_checked(tmp_path, capsys):
    _fake_run(tmp_path / "results")
    (tmp_path / "file").write_text("x")
    assert cli.main(["report", str(tmp_path / "results"), "--plots", str(tmp_path / "file")]) == 2
    assert "--plots" in _one_error_line(capsys)


# -- 7. one lavakv eval per --out ------------------------------------------------------------------------------------
def test_eval_lock_refuses_a_second_holder(tmp_path):
    out = tmp_path / "results"
    with eval_lock(out) as path:
        assert path == out / LOCK_NAME and path.read_text().strip() == str(os.getpid())
        with pytest.raises(ValueError) as info, eval_lock(out):
            pass
        assert str(info.value) == (f"another lavakv eval is writing to {out} (pid {os.getpid()}); wait for it or "
                                   "use another --out")
    with eval_lock(out):  # released at the end of the block
        pass


def test_eval_refused_while_another_process_holds_the_lock(tiny_eval, tmp_path, capsys):
    out = tmp_path / "results"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from lavakv.eval.lock import eval_lock
            with eval_lock({str(out)!r}):
                print("locked", flush=True)
                sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = cli.main(["eval", "--task", "needle", "--methods", "full", "--lengths", "250", "--out", str(out),
                         "--no-progress"])
        assert code == 2
        line = _one_error_line(capsys)
        assert f"another lavakv eval is writing to {out} (pid {holder.pid}); wait for it or use another --out" in line
        assert tiny_eval == []  # refused before loading the model
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--task", "ruler:vt", "--depths", "0.5"], "--depths would change nothing"),
    (["--task", "code", "--data-dir", "."], "--data-dir would change nothing"),
    (["--task", "needle", "--continuation", "32"], "--continuation would change nothing"),
    (["--task", "fidelity", "--max-new-tokens", "8"], "--max-new-tokens would change nothing"),
    (["--task", "needle", "--methods", "full", "--budgets", "64"], "--budgets would change nothing"),
    (["--task", "ruler:"], "lists no subtask after ':'"),
])
def test_eval_flags_no_task_reads_are_refused_before_loading(args, message, tiny_eval, tmp_path, capsys):
    """A flag the chosen tasks never read used to be ignored silently."""
    assert cli.main(["eval", *args, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert message in _one_error_line(capsys)
    assert tiny_eval == []
