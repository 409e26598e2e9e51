"""Methods: a scorer x a layer allocation x a head allocation, the presets of METHODS.md §4, and the registry."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lavakv.allocation import HEAD_ALLOCATIONS, LAYER_ALLOCATIONS
from lavakv.budget import validate_budget
from lavakv.scorers import SCORERS

if TYPE_CHECKING:
    import torch

    from lavakv.runtime import Session

# preset -> (scorer, layer allocation, head allocation); "full" has no components
PRESETS: dict[str, tuple[str, str, str] | None] = {
    "full": None,
    "streamingllm": ("streaming", "uniform", "uniform"),
    "h2o": ("h2o", "uniform", "uniform"),
    "tova": ("tova", "uniform", "uniform"),
    "knorm": ("knorm", "uniform", "uniform"),
    "random": ("random", "uniform", "uniform"),
    "snapkv": ("snapkv", "uniform", "uniform"),
    "pyramidkv": ("snapkv", "pyramid", "uniform"),
    "ada-snapkv": ("snapkv", "uniform", "adaptive"),
    "ada-pyramidkv": ("snapkv", "pyramid", "adaptive"),
    "cake": ("cake", "cake", "uniform"),
    "lava": ("lava", "lava", "adaptive"),
    "lava-uniform-layer": ("lava", "uniform", "adaptive"),
    "lava-uniform-head": ("lava", "lava", "uniform"),
    "lava-pyramid": ("lava", "pyramid", "adaptive"),
}

# adaptive heads: Ada-KV floor fraction and its reference budget. With alpha > 0 under a cascade (lava, cake
# layers) truncation starts from the floored kept set, which can differ from a one-shot allocation at the final
# budget; alpha = 0 (the paper's default) is exact.
HEAD_PARAMS = {"alpha": 0.0, "floor_from": "layer"}


def _scorer_params(name: str) -> dict[str, Any]:
    sig = inspect.signature(SCORERS[name])
    return {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _layer_params(name: str) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(LAYER_ALLOCATIONS[name])}


@dataclass(frozen=True)
class Method:
    """A configured compression method. Build it with :func:`method`; use it with :meth:`attach`.

    Attributes:
        name: preset name, or ``"custom"`` for a composition.
        scorer, layers, heads: component names (None for ``full``).
        budget: tokens per KV head per layer on average, window included (METHODS.md §0), or None.
        compression_ratio: fraction of prompt entries removed, or None.
        window: observation window w, always kept.
        params: resolved hyper-parameters of every component.
    """

    name: str
    scorer: str | None
    layers: str | None
    heads: str | None
    budget: int | None
    compression_ratio: float | None
    window: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def compresses(self) -> bool:
        return self.scorer is not None

    def scorer_kwargs(self) -> dict[str, Any]:
        return {k: self.params[k] for k in _scorer_params(self.scorer)}

    def layer_allocation(self):
        """The layer allocation object (static or cascade)."""
        return LAYER_ALLOCATIONS[self.layers](**{k: self.params[k] for k in _layer_params(self.layers)})

    def allocate_heads(self, scores: torch.Tensor, budget: torch.Tensor, configured: torch.Tensor) -> torch.Tensor:
        """Apply the head allocation: ``scores [batch, kv_heads, tokens]``, ``budget [batch]`` -> keep mask."""
        if self.heads == "uniform":
            return HEAD_ALLOCATIONS["uniform"](scores, budget, self.window)
        floor_budget = configured if self.params["floor_from"] == "configured" else None
        return HEAD_ALLOCATIONS["adaptive"](
            scores, budget, self.window, alpha=self.params["alpha"], floor_budget=floor_budget
        )

    def attach(self, model) -> Session:
        """Install this method on ``model``; use as ``with m.attach(model) as session:``."""
        from lavakv.runtime import Session

        return Session(self, model)

    def describe(self) -> dict[str, Any]:
        """The resolved components and parameters, as plain data."""
        return {
            "name": self.name,
            "scorer": self.scorer,
            "layers": self.layers,
            "heads": self.heads,
            "budget": self.budget,
            "compression_ratio": self.compression_ratio,
            "window": self.window,
            "params": dict(self.params),
        }


def list_methods() -> list[str]:
    """Names of the presets."""
    return list(PRESETS)


def method(
    name: str | None = None,
    *,
    scorer: str | None = None,
    layers: str | None = None,
    heads: str | None = None,
    budget: int | None = None,
    compression_ratio: float | None = None,
    window: int = 32,
    **params: Any,
) -> Method:
    """Build a method from a preset name and/or components.

    ``lavakv.method("lava", budget=128)`` or ``lavakv.method(scorer="lava", layers="pyramid", heads="adaptive",
    compression_ratio=0.75)``. Components given with a preset override the preset's. Exactly one of ``budget`` (tokens
    per KV head per layer, window included) and ``compression_ratio`` (fraction removed) is required, except for
    ``"full"``. Extra keyword arguments set component hyper-parameters (see ``lavakv.describe``).
    """
    if name is None and scorer is None:
        raise ValueError(f"give a preset name or a scorer=; presets: {', '.join(PRESETS)}")
    if name is not None and name not in PRESETS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(PRESETS)} (or compose with scorer=...)")
    if name == "full":
        if budget is not None or compression_ratio is not None or scorer or layers or heads or params:
            raise ValueError("method 'full' does not compress: give it no budget, ratio, components or parameters")
        return Method("full", None, None, None, None, None, window)
    preset = PRESETS[name] if name is not None else (scorer, "uniform", "uniform")
    scorer = scorer or preset[0]
    layers = layers or preset[1]
    heads = heads or preset[2]
    for kind, value, registry in (
        ("scorer", scorer, SCORERS),
        ("layers", layers, LAYER_ALLOCATIONS),
        ("heads", heads, {"uniform": None, "adaptive": None}),
    ):
        if value not in registry:
            raise ValueError(f"unknown {kind} {value!r}; choose one of: {', '.join(registry)}")
    validate_budget(budget, compression_ratio, window)
    defaults = {**_scorer_params(scorer), **_layer_params(layers)}
    if heads == "adaptive":
        defaults.update(HEAD_PARAMS)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise TypeError(
            f"unknown parameter(s) {', '.join(unknown)} for scorer={scorer}, layers={layers}, heads={heads}; "
            f"valid: {', '.join(sorted(defaults)) or 'none'}"
        )
    if params.get("floor_from", "layer") not in ("layer", "configured"):
        raise ValueError(
            f"floor_from must be 'layer' (paper) or 'configured' (reference code), got {params['floor_from']!r}"
        )
    if not 0.0 <= float(params.get("alpha", 0.0)) < 1.0:
        raise ValueError(f"alpha (adaptive-head floor fraction) must be in [0, 1), got {params['alpha']}")
    resolved = {**defaults, **params}
    is_preset = name is not None and (scorer, layers, heads) == preset
    m = Method(name if is_preset else "custom", scorer, layers, heads, budget, compression_ratio, window, resolved)
    m.layer_allocation()  # validates the allocation's parameters now, not at prefill
    return m


def describe(name: str) -> dict[str, Any]:
    """The components and default parameters a preset resolves to (no budget set)."""
    if name not in PRESETS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(PRESETS)}")
    if PRESETS[name] is None:
        return {"name": "full", "scorer": None, "layers": None, "heads": None, "params": {}}
    info = method(name, budget=10**9, window=1).describe()
    info.pop("budget"), info.pop("compression_ratio"), info.pop("window")
    return info
