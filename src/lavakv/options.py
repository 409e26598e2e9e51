"""What every component option means and where its default comes from, for ``lavakv describe`` (docs/methods.md,
"Options and their defaults", documents the same options).

An option belongs to one component: the scorer, the layer allocation or the head allocation. Its meaning is mostly
the same wherever it appears (``n_sink`` is not), and its default's source can differ (``kernel_size`` is 7 in
SnapKV's code, 5 in CAKE's): both tables hold an entry under ``"*"`` and per-component exceptions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lavakv.allocation import HEAD_ALLOCATIONS, LAYER_ALLOCATIONS
from lavakv.scorers import scorer_defaults

# option -> what it does; "component:option" where one component's option differs
MEANINGS: dict[str, str] = {
    "kernel_size": "odd width of the 1-D pooling of the window attention along the tokens; 1 turns pooling off",
    "pooling": '"max" (padding and border count as -inf) or "avg" (they count as 0, divided by the full kernel)',
    "gqa": 'reduction over a KV head\'s query heads: "mean" or "max"',
    "gqa_order": 'reduce the group "before-pool" (authors\' GQA code) or pool each query head "after-pool" (kvpress)',
    "value_norm_range": 'tokens the value factor max_k ||V[k]||_1 looks at: "all" real tokens (the paper, Eq. 5) or '
                        '"prefix", the window left out (the authors\' released code)',
    "gamma": "weight of the window-attention variance added to its mean (>= 0; 0 gives SnapKV's scores)",
    "variance": 'variance over the window queries: "sample" (divided by w - 1) or "population" (divided by w)',
    "head_scope": 'average the last query\'s attention over every head of the "layer" or over the KV head\'s "group"',
    "horizon": "future positions the rotation of the expected query is averaged over",
    "values": "multiply the expected attention by the entry's value norm",
    "statistics": 'queries the Gaussian query statistics come from: the whole "prompt" or the last w ("window")',
    "n_sink": "leading real tokens always kept (attention sinks); 0 turns this off",
    "expected-attention:n_sink": "leading real tokens left out of the query statistics and the softmax, and always "
                                 "kept with the layer's highest score; 0 turns this off",
    "query_block": "prompt queries processed at once (bounds memory; the result does not depend on it)",
    "seed": "seed of the CPU generator of the random scores",
    "beta": "slope of the pyramid: the last layer's target is (B - w) / beta (>= 1; 1 is uniform)",
    "schedule": '"reference": the authors\' integer schedule, clamped to the prompt, total often above L (B - w); '
                '"exact": largest-remainder budgets that add up to exactly L (B - w)',
    "tau1_inv": "exponent of the layer's attention dispersion in CAKE's preference (>= 0)",
    "tau2_inv": "exponent of the layer's attention shift over the window in CAKE's preference (>= 0)",
    "preference": '"reference": entropy of the raw window attention, summed, as CAKE\'s code; "renormalized": of '
                  "each head's window-mean attention renormalised over the prefix (lavakv's earlier form)",
    "rounding": '"reference": CAKE\'s adjust_budgets, totals exactly L (B - w), excess over the prompt '
                'redistributed; "floor": floored shares, budgets only shrink, total up to L - 1 short',
    "alpha": "Ada-KV's safeguard floor fraction in [0, 1): each KV head is guaranteed part of the layer budget; "
             "0 is the plain flattened top-k over the layer's heads (a head may keep only its window)",
    "floor": '"exact" (lavakv): every head keeps its top floor(alpha * B_l), the rest is the flattened top-k, '
             'exactly H * B_l per layer and nested, so cascades are exact; "lava-reference": the LAVa authors\' cap '
             "formula, its floor taken from B with the window, so the cache holds about alpha * w entries per head "
             'more than the budget; "adakv-reference": the Ada-KV authors\' formula, floor from B - w, about the '
             "budget; neither is nested",
}

# (component, option) -> where the default comes from; a component missing here takes the option's entry under "*"
SOURCES: dict[tuple[str, str], str] = {
    ("*", "kernel_size"): "Ada-KV and LAVa code, KVCache-Factory scripts",
    ("cake", "kernel_size"): "CAKE code",
    ("*", "pooling"): "Ada-KV and LAVa code, KVCache-Factory scripts",
    ("cake", "pooling"): "CAKE code",
    ("*", "gqa"): "Ada-KV, KVCache-Factory and CAKE code",
    ("*", "gqa_order"): "Ada-KV, LAVa and KVCache-Factory GQA code",
    ("cake", "gqa_order"): "CAKE code",
    ("*", "value_norm_range"): "LAVa paper, Eq. 5",
    ("*", "gamma"): "CAKE code",
    ("*", "variance"): "CAKE code (torch.var)",
    ("*", "head_scope"): "TOVA code (TOVACache.reduce)",
    ("*", "horizon"): "kvpress ExpectedAttentionPress (n_future_positions)",
    ("*", "values"): "kvpress ExpectedAttentionPress (use_vnorm)",
    ("*", "statistics"): "kvpress ExpectedAttentionPress",
    ("expected-attention", "n_sink"): "kvpress ExpectedAttentionPress",
    ("streaming", "n_sink"): "StreamingLLM paper",
    ("*", "query_block"): "lavakv",
    ("*", "seed"): "lavakv",
    ("*", "beta"): "KVCache-Factory code (PyramidKV)",
    ("*", "schedule"): "KVCache-Factory code (PyramidKVCluster)",
    ("*", "tau1_inv"): "lavakv (CAKE tunes it per model and budget; its script falls back to 1.0)",
    ("*", "tau2_inv"): "lavakv (CAKE tunes it per model and budget; its script falls back to 1.0)",
    ("*", "preference"): "CAKE code (calculate_entropy)",
    ("*", "rounding"): "CAKE code (adjust_budgets)",
    ("*", "alpha"): "the LAVa and Ada-KV authors' scripts and code (the LAVa paper's Algorithm 1 is alpha = 0)",
    ("*", "floor"): "lavakv",
}


@dataclass(frozen=True)
class OptionInfo:
    """One option of a method: its component (``"scorer snapkv"``, ``"layers pyramid"``, ``"heads adaptive"``),
    name, value, the component's default, meaning and the source of that default."""

    component: str
    name: str
    value: Any
    default: Any
    meaning: str
    source: str


def component_options(scorer: str, layers: str, heads: str) -> list[tuple[str, str, str, Any]]:
    """The options of a composition: ``(kind, component, option, default)`` for the scorer, then the layer and head
    allocations, in their declaration order."""
    out = [("scorer", scorer, name, default) for name, default in scorer_defaults(scorer).items()]
    for kind, registry, name in (("layers", LAYER_ALLOCATIONS, layers), ("heads", HEAD_ALLOCATIONS, heads)):
        out += [(kind, name, f.name, f.default) for f in dataclasses.fields(registry[name])]
    return out


def option_source(component: str, option: str) -> str:
    """Where the default of ``option`` of ``component`` comes from (KeyError for an undocumented option)."""
    return SOURCES.get((component, option)) or SOURCES[("*", option)]


def option_meaning(component: str, option: str) -> str:
    """What ``option`` of ``component`` does (KeyError for an undocumented option)."""
    return MEANINGS.get(f"{component}:{option}") or MEANINGS[option]


def describe_options(scorer: str, layers: str, heads: str, values: dict[str, Any]) -> list[OptionInfo]:
    """Every option of a composition with its value (``values``, e.g. a method's resolved params), default,
    meaning and source."""
    return [OptionInfo(f"{kind} {component}", option, values.get(option, default), default,
                       option_meaning(component, option), option_source(component, option))
            for kind, component, option, default in component_options(scorer, layers, heads)]
