"""``lavakv eval`` spread over processes: shares from RANK / WORLD_SIZE, per-rank shards merged by the last rank,
resuming from shards, the per-rank eval lock, devices, and two real processes under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_eval_support import tiny_eval_pair

from lavakv.eval import EvalConfig, TaskOptions, run_eval
from lavakv.eval import runner as runner_module
from lavakv.eval.commands import eval_device
from lavakv.eval.lock import eval_lock, rank_lock_name
from lavakv.eval.runner import METRICS, PREDICTIONS, TIMING_KEYS, Shard, read_predictions, shard_from_env, shard_name

TESTS = Path(__file__).resolve().parent


def _config(out: Path, task: str = "needle", **options) -> EvalConfig:
    defaults = dict(lengths=[200], depths=[0.0, 0.5, 1.0], samples=1, max_new_tokens=4, continuation=8)
    defaults.update(options)
    return EvalConfig(task=task, methods=["full", "snapkv"], budgets=[40], window=8, out=out,
                      options=TaskOptions(**defaults))


def _untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


def _same_results(directories_a: list[Path], directories_b: list[Path]) -> None:
    """Same run directory names, same records per sample id (timings aside), same metrics (decode time aside)."""
    assert [d.name for d in directories_a] == [d.name for d in directories_b]
    for a, b in zip(directories_a, directories_b, strict=True):
        records_a = {r["id"]: _untimed(r) for r in read_predictions(a / PREDICTIONS)}
        records_b = {r["id"]: _untimed(r) for r in read_predictions(b / PREDICTIONS)}
        assert records_a == records_b
        metrics_a = json.loads((a / METRICS).read_text())
        metrics_b = json.loads((b / METRICS).read_text())
        metrics_a.pop("decode_seconds")
        metrics_b.pop("decode_seconds")
        assert metrics_a == metrics_b


def _runs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir())


# -- shares -----------------------------------------------------------------------------------------------------------
def test_shard_from_the_torchrun_environment():
    assert shard_from_env({}) == Shard(0, 1, 0)
    assert shard_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Shard(3, 4, 1)
    shard = Shard(1, 3)
    assert [i for i in range(8) if shard.owns(i)] == [1, 4, 7] and shard.predictions == "predictions.rank1.jsonl"
    assert Shard().predictions == PREDICTIONS and not Shard().distributed


@pytest.mark.parametrize(("environ", "message"), [
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not a whole number"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 but RANK is not set"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "need 0 <= RANK < WORLD_SIZE"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "need 0 <= RANK < WORLD_SIZE"),
])
def test_bad_torchrun_environment_is_one_clear_error(environ, message):
    with pytest.raises(ValueError, match=message):
        shard_from_env(environ)


def test_each_rank_gets_its_own_gpu_and_cpu_stays_cpu(monkeypatch):
    assert eval_device("cpu", Shard(1, 2, 1)) == "cpu"
    assert eval_device("cuda:1", Shard()) == "cuda:1"  # a single process: as given
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert eval_device("cuda", Shard(3, 4, 1)) == "cuda:1"
    with pytest.raises(ValueError, match="--device cuda:0 under torchrun .* give --device cuda"):
        eval_device("cuda:0", Shard(1, 2, 1))
    with pytest.raises(ValueError, match="LOCAL_RANK=2 but this machine has 2 CUDA device"):
        eval_device("cuda", Shard(2, 3, 2))


# -- locks ------------------------------------------------------------------------------------------------------------
def test_ranks_of_one_job_share_the_lock_and_keep_others_out(tmp_path):
    out = tmp_path / "results"
    with eval_lock(out, rank=0, world_size=2), eval_lock(out, rank=1, world_size=2):
        assert (out / rank_lock_name(1)).read_text().strip() == str(os.getpid())
        with pytest.raises(ValueError, match=f"another lavakv eval is writing to {out}"):
            with eval_lock(out):  # a single process
                pass
        with pytest.raises(ValueError, match=f"rank 1 of another distributed lavakv eval is writing to {out}"):
            with eval_lock(out, rank=1, world_size=2):  # the same rank of another job
                pass
    with eval_lock(out):
        with pytest.raises(ValueError, match=f"another lavakv eval is writing to {out}"):
            with eval_lock(out, rank=1, world_size=2):
                pass
    with eval_lock(out, rank=1, world_size=2):  # all released
        pass


# -- shards and merging, in one process -------------------------------------------------------------------------------
def test_last_rank_merges_the_shards_into_what_one_process_writes(tmp_path):
    model, tokenizer = tiny_eval_pair(chat=True, layers=2)
    config = _config(tmp_path / "ranks")
    second = run_eval(model, tokenizer, config, model_id="tiny", progress=False, shard=Shard(1, 2))
    assert {r.status for r in second} == {"partial"} and all(r.metrics is None for r in second)
    for result in second:
        names = sorted(p.name for p in result.directory.iterdir())
        assert names == ["config.json", shard_name(1), "provenance.json"]
        assert [r["index"] for r in read_predictions(result.directory / shard_name(1))] == [1]
    first = run_eval(model, tokenizer, config, model_id="tiny", progress=False, shard=Shard(0, 2))
    assert {r.status for r in first} == {"finished"}
    for result in first:
        names = sorted(p.name for p in result.directory.iterdir())
        assert names == ["config.json", METRICS, PREDICTIONS, "provenance.json"]  # shards merged away
        assert [r["index"] for r in read_predictions(result.directory / PREDICTIONS)] == [0, 1, 2]
        provenance = json.loads((result.directory / "provenance.json").read_text())
        assert provenance["world_size"] == 2 and set(provenance["rank_seconds"]) == {"0", "1"}
    single = run_eval(model, tokenizer, _config(tmp_path / "single"), model_id="tiny", progress=False)
    _same_results(_runs(tmp_path / "ranks"), _runs(tmp_path / "single"))
    assert [r.metrics["sample_ids"] for r in first] == [r.metrics["sample_ids"] for r in single]
    again = run_eval(model, tokenizer, config, model_id="tiny", progress=False, shard=Shard(1, 2))
    assert {r.status for r in again} == {"skipped"}


def test_a_rerun_resumes_from_the_shards_of_an_interrupted_job(tmp_path, monkeypatch):
    model, tokenizer = tiny_eval_pair(chat=True, layers=2)
    config = _config(tmp_path / "ranks", task="fidelity", lengths=[120], samples=5, depths=None)
    real = runner_module.evaluate_sample
    calls: list[int] = []

    def crash_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_module, "evaluate_sample", crash_after_one)
    with pytest.raises(KeyboardInterrupt):  # rank 0 of 2 (samples 0, 2, 4) stops after sample 0
        run_eval(model, tokenizer, config, model_id="tiny", progress=False, shard=Shard(0, 2))
    monkeypatch.setattr(runner_module, "evaluate_sample", real)
    run_eval(model, tokenizer, config, model_id="tiny", progress=False, shard=Shard(1, 2))  # samples 1, 3
    with open(_runs(tmp_path / "ranks")[0] / shard_name(0), "a") as handle:  # a write torn by the interruption
        handle.write('{"id": "L120-')
    evaluated: list[int] = []

    def count(model, tokenizer, session, task, sample, methods, agnostic):
        evaluated.append(int(sample.id.rsplit("-", 1)[1]))
        return real(model, tokenizer, session, task, sample, methods, agnostic)

    monkeypatch.setattr(runner_module, "evaluate_sample", count)
    resumed = run_eval(model, tokenizer, config, model_id="tiny", progress=False)  # one process, any world size
    assert sorted(evaluated) == [2, 4]  # only what no shard holds
    assert {r.status for r in resumed} == {"finished"}
    for result in resumed:
        assert not list(result.directory.glob("predictions.rank*"))
    monkeypatch.setattr(runner_module, "evaluate_sample", real)
    run_eval(model, tokenizer, _config(tmp_path / "single", task="fidelity", lengths=[120], samples=5, depths=None),
             model_id="tiny", progress=False)
    _same_results(_runs(tmp_path / "ranks"), _runs(tmp_path / "single"))


# -- two processes under torchrun -------------------------------------------------------------------------------------
WORKER = """
    import sys
    sys.path.insert(0, {tests!r})
    from test_eval_support import tiny_eval_pair
    from lavakv.models import loading
    pair = tiny_eval_pair(chat=True, layers=2)
    loading.load_model = lambda name, *, dtype, device: pair
    from lavakv.cli import main
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_torchrun_two_processes_give_the_single_process_results(tmp_path, monkeypatch):
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(WORKER.format(tests=str(TESTS))))
    argv = ["eval", "--model", "smollm2-135m", "--task", "needle", "--methods", "full,snapkv", "--budgets", "40",
            "--window", "8", "--lengths", "200", "--depths", "0,0.5,1", "--samples", "2", "--max-new-tokens", "4",
            "--no-progress"]
    environ = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker), *argv,
         "--out", str(tmp_path / "ranks")],
        capture_output=True, text=True, timeout=180, env=environ)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 of 2" in done.stdout and "rank 1 of 2" in done.stdout
    assert "2 run(s) finished" in done.stdout  # the last rank merged both runs and printed the table
    ranks = _runs(tmp_path / "ranks")
    for directory in ranks:
        assert not list(directory.glob("predictions.rank*"))
        indices = sorted(r["index"] for r in read_predictions(directory / PREDICTIONS))
        assert indices == list(range(6))
    # the same evaluation in one process, one thread like each torchrun rank (OMP_NUM_THREADS=1)
    from lavakv.models import loading

    pair = tiny_eval_pair(chat=True, layers=2)
    monkeypatch.setattr(loading, "load_model", lambda name, *, dtype, device: pair)
    from lavakv.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*argv, "--out", str(tmp_path / "single")]) == 0
    finally:
        torch.set_num_threads(threads)
    _same_results(ranks, _runs(tmp_path / "single"))
