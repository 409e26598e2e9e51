"""kvpress side of ``expected_attention_parity.py``: every layer's ExpectedAttentionPress scores for one prompt.

Runs inside benchmarks/.kvpress-venv (``bash benchmarks/kvpress_env.sh``); never imports lavakv. One prefill under
``with press(model)`` (kvpress's own hooks); each call of the press's ``score`` is recorded, then compression goes
on as kvpress does it. Writes ``{"scores": {layer: [batch, kv_heads, tokens] float32}, "kvpress": version}``.

    .kvpress-venv/bin/python benchmarks/kvpress_ea_scores.py --model-dir DIR --ids ids.pt --out scores.pt
"""

from __future__ import annotations

import argparse
from importlib.metadata import version
from pathlib import Path

import torch
from kvpress_bench import load, new_cache
from prompts import load_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--ids", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from kvpress import ExpectedAttentionPress

    model = load(args.model_dir)
    ids = load_ids(args.ids)
    press = ExpectedAttentionPress(compression_ratio=0.5)
    scores: dict[int, torch.Tensor] = {}
    score = press.score

    def recorded(module, *rest, **kwargs):
        out = score(module, *rest, **kwargs)
        scores[module.layer_idx] = out.detach().float().cpu()
        return out

    press.score = recorded
    with torch.no_grad(), press(model):
        model(ids, past_key_values=new_cache(model), logits_to_keep=1)
    torch.save({"scores": scores, "kvpress": version("kvpress"), "press": repr(press)}, args.out)


if __name__ == "__main__":
    main()
