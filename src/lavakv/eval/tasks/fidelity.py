"""Fidelity to the uncompressed model on real text: teacher-forced continuation and attention-output error.

Sample ``i`` takes a span of a standard-library source file (seeded choice of file and offset): ``length`` prompt
tokens, then ``continuation`` tokens. One exact prefill of the prompt fills every method's cache and an
uncompressed reference cache. Then:

* the continuation (all but its last token) is fed teacher-forced through each cache in one block; against the
  reference, per position: KL(full || compressed) of the next-token distributions, top-1 agreement, and the
  negative log-likelihood of the true next token, giving the perplexity ratio compressed / full (the first
  continuation token is predicted from the prefill logits, which compression never changes, so it is left out);
* per compressible layer, the relative error ||y - y_hat||_F / ||y||_F of the attention output (before the output
  projection) of the last ``window`` prompt queries: y attends over every prompt key, y_hat over the entries the
  layer kept. The window queries and the kept entries come from the session's public API
  (``session.window_queries`` and ``session.kept_entries``), read right after the prefill. The kept
  entries of a head are stored in position order and the window is always kept, so the last ``window`` of them
  are the window (causal among the window queries) and the rest precede every window query; a layer where that
  check fails reports NaN.
"""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import torch

from lavakv.compat import cache_kwargs
from lavakv.eval.filling import alone, fill_caches
from lavakv.eval.tasks.base import Sample, Task, TaskOptions, resolve
from lavakv.eval.tasks.sources import read_source, stdlib_files, stdlib_root

DEFAULT_LENGTHS = [2048]


class FidelityTask(Task):
    """Teacher-forced KL / top-1 / perplexity ratio and per-layer attention-output error; headline ``kl``."""

    name = "fidelity"
    score_name = "kl"
    generates = False
    has_question = False

    def __init__(self, tokenizer, options: TaskOptions) -> None:
        super().__init__(tokenizer, options)
        self.lengths = resolve(options.lengths, DEFAULT_LENGTHS)
        self.repeats = resolve(options.samples, 10)
        self.continuation = options.continuation
        if self.continuation < 2:
            raise ValueError(f"fidelity needs a continuation of at least 2 tokens, got {self.continuation}")

    def __len__(self) -> int:
        return len(self.lengths) * self.repeats

    def settings(self) -> dict[str, Any]:
        return {"lengths": self.lengths, "samples_per_length": self.repeats, "seed": self.options.seed,
                "continuation": self.continuation, "source": f"standard library at {stdlib_root()}"}

    def sample(self, index: int) -> Sample:
        length = self.lengths[index // self.repeats]
        need = length + self.continuation
        rng = random.Random(f"{self.sample_seed(*divmod(index, self.repeats))}:fidelity")
        files = stdlib_files()
        for _ in range(200):
            path = files[rng.randrange(len(files))]
            ids = list(self.tokenizer(read_source(path), add_special_tokens=False)["input_ids"])
            if len(ids) >= need:
                break
        else:
            raise ValueError(f"fidelity: no standard-library file has {need} tokens; use a smaller length")
        start = rng.randrange(len(ids) - need + 1)
        prompt, continuation = ids[start:start + length], ids[start + length:start + need]
        return Sample(
            id=self.sample_id(index), context="", query="", answer_prefix="", references=[],
            max_new_tokens=0, chat=False,
            meta={"length": length, "file": str(path.relative_to(stdlib_root())), "offset_tokens": start},
            payload=(prompt, continuation),
        )

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("kl", "top1_agreement", "ppl_ratio", "attention_error"):
            values = [r["scores"][name] for r in records if not math.isnan(r["scores"][name])]
            out[name] = statistics.fmean(values) if values else float("nan")
        layers = [r["attention_error_per_layer"] for r in records]
        if layers:
            out["attention_error_per_layer"] = [
                statistics.fmean(v for v in column if not math.isnan(v)) if any(not math.isnan(v) for v in column)
                else float("nan") for column in zip(*layers, strict=True)
            ]
        return out

    # -- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self, model, session, sample: Sample, methods: list, query_agnostic: bool = False
                 ) -> list[dict[str, Any]]:
        """Scores of every method on ``sample`` (one shared prefill); one record per method, in order. There is no
        question, so ``query_agnostic`` changes nothing."""
        from lavakv.methods import method as make_method

        prompt, continuation = sample.payload
        device = next(model.parameters()).device
        ids = torch.tensor([prompt], device=device)  # [1, n]
        everyone = [make_method("full"), *methods]
        caches = [c for c, _, _ in fill_caches(session, self.tokenizer, ids, everyone, record_window_queries=True)]
        stats = [session.stats(c) for c in caches]
        # a method that does not compress (``full``) evicts nothing: its attention output is exact in every layer;
        # one filled alone (chunked, kvzip) has no window queries of the exact prefill to measure it with
        errors = [[]] + [[0.0] * len(stat.layers) if not m.compresses else
                         [float("nan")] * len(stat.layers) if alone(m) else
                         attention_errors(session, caches[0], cache, m.window)
                         for cache, m, stat in zip(caches[1:], methods, stats[1:], strict=True)]
        block = torch.tensor([continuation[:-1]], device=device)  # [1, c - 1]
        targets = torch.tensor(continuation[1:], device=device)  # [c - 1]
        n = len(prompt)
        logprobs = []
        with torch.no_grad():
            for cache in caches:
                with session.extending(cache):
                    out = model(block, attention_mask=torch.ones(1, n + block.shape[1], dtype=torch.long,
                                                                 device=device), **cache_kwargs(cache))
                logprobs.append(torch.log_softmax(out.logits[0].float(), dim=-1))  # [c - 1, vocab]
        reference = logprobs[0]
        nll_full = -reference.gather(1, targets[:, None]).mean()
        records = []
        for logp, stat, error in zip(logprobs[1:], stats[1:], errors[1:], strict=True):
            kl = (reference.exp() * (reference - logp)).sum(-1).mean()
            top1 = (reference.argmax(-1) == logp.argmax(-1)).float().mean()
            nll = -logp.gather(1, targets[:, None]).mean()
            finite = [e for e in error if not math.isnan(e)]
            records.append({
                "scores": {"kl": float(kl), "top1_agreement": float(top1),
                           "ppl_ratio": float(torch.exp(nll - nll_full)),
                           "attention_error": statistics.fmean(finite) if finite else float("nan")},
                "ppl_full": float(torch.exp(nll_full)), "ppl": float(torch.exp(nll)),
                "attention_error_per_layer": error,
                "prompt_tokens": n, "compressed_tokens": n, "kept_entries": stat.kept_entries,
                "resident_kv_bytes": stat.resident_kv_bytes, "uncompressed_kv_bytes": stat.uncompressed_kv_bytes,
            })
        return records


def _kept(session, cache, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A layer's prompt entries right after prefill: K, V ``[b, h, m, d]`` padded per head, and valid ``[b, h, m]``."""
    keys, values, lengths = session.kept_entries(cache, index)
    b, h = lengths.shape
    m = int(lengths.max())
    valid = torch.arange(m, device=keys.device)[None, None, :] < lengths.to(keys.device)[..., None]  # [b, h, m]
    padded_keys = keys.new_zeros(b, h, m, keys.shape[-1])
    padded_values = values.new_zeros(b, h, m, values.shape[-1])
    padded_keys[valid], padded_values[valid] = keys, values
    return padded_keys, padded_values, valid


def _window_attention(q: torch.Tensor, keys, values, valid, positions, scaling: float) -> torch.Tensor:
    """Attention output ``[b, h_kv, g, w, d]`` of window queries ``q [b, hq, w, d]`` over entries at ``positions``."""
    b, hq, w, d = q.shape
    h = keys.shape[1]
    qg = q.float().reshape(b, h, hq // h, w, d)
    logits = torch.einsum("bhgwd,bhmd->bhgwm", qg, keys.float()) * scaling
    query_pos = positions.new_tensor(range(w))  # window-relative positions of the queries
    visible = valid[:, :, None, None, :] & (positions[:, :, None, None, :] <= query_pos[None, None, None, :, None])
    probs = torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)
    return torch.einsum("bhgwm,bhmd->bhgwd", probs, values.float())


def attention_errors(session, full_cache, cache, window: int) -> list[float]:
    """Per compressed layer: ||y - y_hat||_F / ||y||_F of the last ``window`` queries' attention outputs.

    ``full_cache`` holds every prompt entry (method ``full``), ``cache`` the compressed selection; both come from
    one ``session.prefill``.
    """
    errors = []
    for index in session.stats(cache).layers:
        query, scaling = session.window_queries(cache, index)
        keys, values, valid = _kept(session, full_cache, index)
        n = keys.shape[2]
        w = min(window, n)
        q = query[:, :, -w:]
        # positions relative to the window start: prefix entries < 0 (seen by every window query)
        full_pos = torch.arange(n, device=keys.device) - (n - w)
        y = _window_attention(q, keys, values, valid, full_pos.expand(keys.shape[:3]), scaling)
        k_kept, v_kept, valid_kept = _kept(session, cache, index)
        if k_kept.shape == keys.shape and torch.equal(k_kept, keys):
            errors.append(0.0)  # nothing evicted
            continue
        lengths = valid_kept.sum(-1, keepdim=True)  # [b, h, 1]
        slot = torch.arange(k_kept.shape[2], device=keys.device)
        pos = slot[None, None, :] - (lengths - w)  # window entries -> 0..w-1, earlier kept entries < 0
        tail = valid_kept & (pos >= 0)
        window_keys = keys[:, :, n - w:]
        if int(tail.sum()) != tail.shape[0] * tail.shape[1] * w or not torch.equal(
            k_kept[tail].reshape(-1), window_keys.reshape(-1)
        ):
            errors.append(float("nan"))  # the kept entries do not end with the window: cannot place them
            continue
        y_hat = _window_attention(q, k_kept, v_kept, valid_kept, pos, scaling)
        errors.append(float((y - y_hat).norm() / y.norm().clamp_min(1e-30)))
    return errors
