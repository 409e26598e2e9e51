"""Compression time attribution when one prefill fills several caches (the shared window attention)."""

from __future__ import annotations

import time

import torch
from conftest import prompt, tiny_model

import lavakv
from lavakv.scorers import base

DELAY = 0.2  # seconds added to each computation of a layer's window attention


def test_shared_window_attention_is_charged_to_every_reader_and_spent_once(monkeypatch):
    real = torch.nan_to_num

    def slow_nan_to_num(*args, **kwargs):  # runs inside the timed window-attention computation
        time.sleep(DELAY)
        return real(*args, **kwargs)

    monkeypatch.setattr(base.torch, "nan_to_num", slow_nan_to_num)
    layers = 2
    model = tiny_model("llama", layers=layers)
    ids, mask = prompt(length=80)
    methods = [lavakv.method("snapkv", budget=24, window=8), lavakv.method("lava", budget=24, window=8),
               lavakv.method("streamingllm", budget=24, window=8)]  # the first two read the window attention
    with lavakv.method("full").attach(model) as session:
        caches, _ = session.prefill(ids, mask, methods)
        stats = [session.stats(c) for c in caches]
    window = layers * DELAY
    snap, lava, streaming = stats
    assert snap.compression_seconds >= window and lava.compression_seconds >= window  # each as if alone
    assert streaming.compression_seconds < DELAY  # it never reads the window attention
    assert snap.shared_prefill_seconds >= window > lava.shared_prefill_seconds  # computed by the first reader
    spent = sum(s.shared_prefill_seconds for s in stats)
    assert window <= spent < 2 * window  # computed once per layer, not once per reader
