"""lavakv's expected-attention scores against kvpress's ExpectedAttentionPress (the authors' code), layer by layer.

Both libraries score the same token ids (the benchmark text) with the same model: kvpress in its own venv
(``kvpress_ea_scores.py``, ``bash benchmarks/kvpress_env.sh`` builds it), lavakv here with ``expected-attention``
at its defaults (prompt statistics, 4 sinks, horizon 512, value norms). Compared on the entries both score freely:
after the 4 sink tokens (kvpress gives them max + 1, lavakv the layer's maximum) and before lavakv's 32-token window
(which lavakv keeps without scoring). ``--statistics window`` scores with lavakv's earlier statistics instead
(a check that the comparison can tell them apart). Reported per layer: the largest relative difference of the
scores, the share of each KV head's top 10 % / 25 % that both keep, the share of entries each scores exactly 0
(attention that underflows float32), and the largest magnitude of lavakv's logits
(the exponent of the expected exponentiated logit) with float32's spacing there: two float32 computations done in
another order can differ by a few spacings, which the softmax turns into a factor exp(difference).

    python benchmarks/expected_attention_parity.py --out benchmarks/results/expected_attention_parity_smollm2-135m.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from common import recorded_scorer, write_result
from prompts import prompt_ids, save_ids

import lavakv
from lavakv.models import converted_dir, load_model
from lavakv.scorers.expected_attention import expected_logits

HERE = Path(__file__).resolve().parent


def lavakv_scores(model, ids: torch.Tensor, window: int, statistics: str
                  ) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
    """Every layer's ``expected-attention`` scores ``[batch, kv_heads, tokens]`` from one lavakv prefill, and the
    largest magnitude of the logits its softmax normalises (the keys past the 4 sinks)."""
    method = lavakv.method("expected-attention", budget=window, window=window, statistics=statistics)
    with recorded_scorer("expected-attention", ids.shape[1]) as calls, method.attach(model) as session:
        session.prefill(ids, None, [method])
    largest = {layer: float(expected_logits(inputs, horizon=512, statistics=statistics, n_sink=4)[:, :, 4:].abs().max())
               for layer, (inputs, _) in enumerate(calls)}
    return {layer: scores.cpu() for layer, (_, scores) in enumerate(calls)}, largest


def float32_spacing(x: float) -> float:
    """The gap between float32 ``x`` and the next float32 above it (the resolution of a logit of that size)."""
    t = torch.tensor(abs(x), dtype=torch.float32)
    return float(torch.nextafter(t, torch.tensor(float("inf"))) - t)


def overlap(a: torch.Tensor, b: torch.Tensor, keep: int) -> float:
    """Mean over heads of |top-keep(a) & top-keep(b)| / keep, for ``[heads, tokens]`` scores."""
    top_a = torch.zeros_like(a, dtype=torch.bool).scatter_(1, a.topk(keep, dim=1).indices, True)
    top_b = torch.zeros_like(b, dtype=torch.bool).scatter_(1, b.topk(keep, dim=1).indices, True)
    return float((top_a & top_b).sum(1).float().mean() / keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--statistics", default="prompt", help="lavakv's option (window: the earlier scorer)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    ids = prompt_ids(tokenizer, args.tokens)
    with tempfile.TemporaryDirectory() as work:
        save_ids(ids, Path(work) / "ids.pt")
        done = subprocess.run(["bash", str(HERE / "kvpress_env.sh")], capture_output=True, text=True, check=True)
        python = done.stdout.strip().splitlines()[-1]
        subprocess.run([python, str(HERE / "kvpress_ea_scores.py"), "--model-dir", str(converted_dir(args.model)),
                        "--ids", str(Path(work) / "ids.pt"), "--out", str(Path(work) / "scores.pt")],
                       cwd=HERE, check=True)
        theirs = torch.load(Path(work) / "scores.pt")
    ours, largest = lavakv_scores(model, ids, args.window, args.statistics)
    span = slice(4, args.tokens - args.window)
    rows = []
    for layer in sorted(ours):
        a, b = ours[layer][0, :, span].double(), theirs["scores"][layer][0, :, span].double()
        rows.append({"layer": layer, "max_relative_difference": float(((a - b).abs() / b.abs().clamp_min(1e-30)).max()),
                     "top10_shared": overlap(a, b, round(0.1 * a.shape[1])),
                     "top25_shared": overlap(a, b, round(0.25 * a.shape[1])),
                     "largest_abs_logit": largest[layer], "float32_spacing_there": float32_spacing(largest[layer]),
                     "zero_scores": float((a == 0).double().mean()),
                     "zero_scores_kvpress": float((b == 0).double().mean())})
    worst = max(r["max_relative_difference"] for r in rows)
    print(f"kvpress {theirs['kvpress']}: {theirs['press']}")
    top10, top25 = min(r["top10_shared"] for r in rows), min(r["top25_shared"] for r in rows)
    print(f"{len(rows)} layers; largest relative score difference {worst:.2e}; top 10 % shared {top10:.4f} "
          f"(worst layer), top 25 % {top25:.4f}")
    write_result(args.out, {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "model": args.model,
                            "tokens": args.tokens, "statistics": args.statistics, "kvpress": theirs["kvpress"],
                            "press": theirs["press"],
                            "largest_relative_difference": worst, "layers": rows})


if __name__ == "__main__":
    main()
