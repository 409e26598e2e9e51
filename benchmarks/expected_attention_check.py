"""How well each query-agnostic prediction matches the attention real future queries pay (expected attention check).

One exact prefill of ``context + future`` tokens of the benchmark text records every layer's queries, keys and
values (the scorer inputs lavakv builds). For each layer and KV head, the *real* future attention of a context
entry is the causal softmax attention that the ``future`` queries pay it, averaged over those queries and the
head's query group. Each predictor scores the context alone (the first ``context`` tokens, as a compression at that
point would see them) and keeps its top ``keep`` fraction of the prefix; the figure is the share of the real future
attention mass on the kept entries, divided by the share the best possible set of that size captures (1 = the
oracle). The first ``--sinks`` tokens (attention sinks, which hold most of the mass and which every method keeps)
are left out of both. Predictors: expected attention with prompt statistics (the authors' form, lavakv's
default) and with window statistics (lavakv's earlier form), the window queries' own attention (SnapKV without
pooling), recency, and a random set. Value norms and sink forcing are left out on purpose: this checks the
attention prediction itself.

    python benchmarks/expected_attention_check.py --out benchmarks/results/expected_attention_check_smollm2-135m.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from common import recorded_scorer, write_result
from prompts import prompt_ids

import lavakv
from lavakv.models import load_model
from lavakv.scorers import ScoringInputs, expected_attention_scores


def real_future_attention(inputs: ScoringInputs, context: int) -> torch.Tensor:
    """``[kv_heads, context]`` float32: mean causal attention of the queries after ``context`` on the first
    ``context`` keys, averaged over each KV head's query group (batch row 0)."""
    q = inputs.queries[0, :, context:].float()  # [hq, f, d]
    k = inputs.keys[0].float()  # [h_kv, n, d]
    hq, f, d = q.shape
    g = inputs.group_size
    logits = torch.einsum("hfd,hnd->hfn", q, k.repeat_interleave(g, dim=0)) * inputs.scaling  # [hq, f, n]
    n = k.shape[1]
    causal = torch.arange(n)[None, :] <= (context + torch.arange(f))[:, None]  # [f, n]
    probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)[..., :context].mean(1)  # [hq, ctx]
    return probs.view(-1, g, context).mean(1)


def predictions(inputs: ScoringInputs, context: int, window: int, horizon: int) -> dict[str, torch.Tensor]:
    """``name -> [kv_heads, context]`` scores of each predictor from the context alone (window entries +inf)."""
    sub = ScoringInputs(inputs.queries[:, :, :context], inputs.keys[:, :, :context], inputs.values[:, :, :context],
                        inputs.valid[:, :context], inputs.scaling, window, inputs.rope_inv_freq)
    out = {f"expected-attention[statistics={s}]": expected_attention_scores(
        sub, horizon=horizon, values=False, statistics=s, n_sink=0)[0] for s in ("prompt", "window")}
    attention = sub.window_attention()[0]  # [hq, w, ctx]
    g = sub.group_size
    out["window attention (snapkv, no pooling)"] = attention.mean(1).view(-1, g, context).mean(1)
    out["recency"] = torch.arange(context, dtype=torch.float32).expand(sub.kv_heads, -1)
    out["random"] = torch.rand(sub.kv_heads, context, generator=torch.Generator().manual_seed(0))
    return out


def mass_ratio(score: torch.Tensor, real: torch.Tensor, keep: int) -> torch.Tensor:
    """``[kv_heads]``: real mass on the top-``keep`` prefix entries by ``score`` over the oracle's top-``keep``."""
    kept = real.gather(1, score.topk(keep, dim=1).indices).sum(1)
    return kept / real.topk(keep, dim=1).values.sum(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--context", type=int, default=2048, help="context tokens the predictors see")
    parser.add_argument("--future", type=int, default=512, help="following tokens whose attention is the target")
    parser.add_argument("--keep", default="0.1,0.25", help="fractions of the context prefix kept")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--sinks", type=int, default=4, help="leading tokens left out (always kept)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    ids = prompt_ids(tokenizer, args.context + args.future)
    method = lavakv.method("expected-attention", budget=args.window, window=args.window)
    with recorded_scorer("expected-attention", ids.shape[1]) as calls, method.attach(model) as session:
        session.prefill(ids, None, [method])
    recorded = [inputs for inputs, _ in calls]
    prefix = args.context - args.window
    span = slice(args.sinks, prefix)
    rows = []
    for fraction in (float(f) for f in args.keep.split(",")):
        keep = max(1, round(fraction * (prefix - args.sinks)))
        per_predictor: dict[str, list[float]] = {}
        for inputs in recorded:
            real = real_future_attention(inputs, args.context)[:, span]
            for name, score in predictions(inputs, args.context, args.window, args.future).items():
                ratios = mass_ratio(score[:, span], real, keep)
                per_predictor.setdefault(name, []).extend(ratios.tolist())
        for name, values in per_predictor.items():
            rows.append({"keep": fraction, "predictor": name, "mean": statistics.fmean(values),
                         "median": statistics.median(values), "min": min(values), "heads": len(values)})
    print(f"{'keep':>5}  {'predictor':<40} {'mean':>6} {'median':>6} {'min':>6}")
    for row in rows:
        print(f"{row['keep']:>5}  {row['predictor']:<40} {row['mean']:6.3f} {row['median']:6.3f} {row['min']:6.3f}")
    write_result(args.out, {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                            "model": args.model, "context": args.context, "future": args.future, "sinks": args.sinks,
                            "layers": len(recorded), "rows": rows})


if __name__ == "__main__":
    main()
