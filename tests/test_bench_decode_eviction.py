"""Smoke test of benchmarks/decode_eviction.py on a tiny random model: every part runs and renders.

Plots are left out: matplotlib's start-up alone would exceed the time a test may take."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from conftest import char_tokenizer, tiny_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("decode_eviction", BENCHMARKS / "decode_eviction.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_eviction_benchmark_smoke(tmp_path, monkeypatch):
    module = _module(monkeypatch)
    tokenizer = char_tokenizer()
    model = tiny_model("llama", vocab=len(tokenizer))
    args = argparse.Namespace(
        model="tiny", samples=2, batch=2, prompt=48, continuation=32, bucket=16, methods=["lava", "streamingllm"],
        decode_budgets=[40], interval=8, window=8, method="lava", budget=24, generate=24, record_every=8,
        no_full=False, repeats=1,
    )
    args.out = tmp_path / "fidelity_tiny.json"
    fidelity = module.run_fidelity(model, tokenizer, args)
    assert set(fidelity["results"]) == {"lava@D40", "streamingllm@D40"}
    for row in fidelity["results"].values():
        assert len(row["kl"]) == 2 and len(row["kl"][0]) == 2  # samples x buckets
        assert row["max_held"] <= 40 and sum(row["evictions"]) > 0
    args.out = tmp_path / "memory_tiny.json"
    args.decode_budgets = [32]
    memory = module.run_memory(model, tokenizer, args)
    bounded = memory["variants"]["lava@24,D32"]
    assert bounded["decode_evictions"] > 0 and bounded["max_held_per_head"] <= 32
    grown = memory["variants"]["lava@24"]["trace"]
    assert grown[-1]["resident_kv_bytes"] > bounded["trace"][-1]["resident_kv_bytes"]
    args.out = tmp_path / "verify_tiny.json"
    args.batch, args.continuation = 1, 16
    verify = module.run_verify(model, tokenizer, args)
    assert verify["evictions"][0] == verify["evictions"][1] > 0 and verify["top1_agreement"] == 1.0
    assert json.loads(args.out.read_text())["environment"]["command"]
    args.out = tmp_path / "steptime_tiny.json"
    assert len(module.run_steptime(model, tokenizer, args)["seconds"]["8"]) == 1
    text = module.render(tmp_path)
    assert "| lava | 40 | 32 |" in text and "| lava@24,D32 |" in text and "Chunked teacher forcing" in text
    assert "**Step cost, `tiny`**" in text
