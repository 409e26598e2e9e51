"""Methods: a scorer x a layer allocation x a head allocation, the presets (docs/methods.md) and the registry."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from lavakv.allocation import HEAD_ALLOCATIONS, LAYER_ALLOCATIONS
from lavakv.budget import validate_budget, validate_chunk_size, validate_decode_budget
from lavakv.options import describe_options
from lavakv.runtime.components import Components
from lavakv.runtime.session import Session
from lavakv.scorers import RECONSTRUCTION_SCORERS, SCORERS, Scorer, scorer_defaults

DEFAULT_WINDOW = 32

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
    "expected-attention": ("expected-attention", "uniform", "uniform"),
    "lava-ea": ("expected-attention", "lava", "adaptive"),
    "kvzip": ("kvzip", "uniform", "uniform"),
    "lava-kvzip": ("kvzip", "lava", "adaptive"),
}


def _check_components(scorer: Any, layers: Any, heads: Any) -> None:
    """Each component is the name (a string) of a registered scorer / layer allocation / head allocation."""
    for kind, value, registry in (
        ("scorer", scorer, SCORERS),
        ("layers", layers, LAYER_ALLOCATIONS),
        ("heads", heads, HEAD_ALLOCATIONS),
    ):
        if not isinstance(value, str) or value not in registry:
            raise ValueError(f"unknown {kind} {value!r}; choose one of (a name, as a string): {', '.join(registry)}")


def _fields(cls) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class Method:
    """A configured compression method. Build it with :func:`method`; use it with :meth:`attach`.

    Attributes:
        name: preset name, or ``"custom"`` for a composition.
        scorer, layers, heads: component names (None for ``full``).
        budget: tokens per KV head per layer on average, window included (docs/methods.md), or None.
        compression_ratio: fraction of prompt entries removed, or None.
        window: observation window w, always kept.
        params: resolved hyper-parameters of every component.
        decode_budget: while generating, at most this many entries per KV head per layer on average (window
            included), by decode-time eviction; None: generated tokens are all kept.
        decode_interval: tokens generated between two decode-time evictions.
        chunk_size: prefill the prompt in chunks of at most this many tokens, compressing after each (bounded
            prefill memory); None: one exact prefill.
    """

    name: str
    scorer: str | None
    layers: str | None
    heads: str | None
    budget: int | None
    compression_ratio: float | None
    window: int
    params: dict[str, Any] = field(default_factory=dict)
    decode_budget: int | None = None
    decode_interval: int | None = None
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        self.resolve()  # every setting is checked when a Method is made, however it is made (dataclasses.replace)

    @property
    def compresses(self) -> bool:
        return self.scorer is not None

    def resolve(self) -> Components | None:
        """The components the runtime runs (None for ``full``); every parameter is validated here, once."""
        if "_resolved" not in self.__dict__:
            object.__setattr__(self, "_resolved", self._build_components())
        return self.__dict__["_resolved"]

    def _build_components(self) -> Components | None:
        if self.scorer is None:
            return None
        # components and budgets are checked here too, for a Method built directly or changed with dataclasses.replace
        _check_components(self.scorer, self.layers, self.heads)
        validate_budget(self.budget, self.compression_ratio, self.window)
        interval = validate_decode_budget(self.decode_budget, self.decode_interval, self.budget, self.window)
        validate_chunk_size(self.chunk_size, self.window)
        scorer = Scorer(self.scorer, {k: self.params[k] for k in scorer_defaults(self.scorer)})
        layer_cls, head_cls = LAYER_ALLOCATIONS[self.layers], HEAD_ALLOCATIONS[self.heads]
        layers = layer_cls(**{k: self.params[k] for k in _fields(layer_cls)})
        heads = head_cls(**{k: self.params[k] for k in _fields(head_cls)})
        if layers.cascade and getattr(layers, "reads", None) == "scores" and not scorer.attention_mass:
            raise ValueError(
                f"layer allocation {self.layers!r} budgets layers by the entropy of their scores, which is meaningless "
                f"for scorer {self.scorer!r}; use an attention scorer (lava, snapkv, cake, h2o, tova) or "
                f"layers='uniform'/'pyramid'"
            )
        if self.scorer in RECONSTRUCTION_SCORERS and (self.decode_budget or self.chunk_size or layers.cascade and
                                                       getattr(layers, "reads", None) != "scores"):
            raise ValueError(
                f"scorer {self.scorer!r} scores from a reconstruction pass over a whole context: it cannot be combined "
                "with decode_budget, chunk_size or a layer allocation that reads window attention (cake)"
            )
        return Components(self.name, scorer, layers, heads, self.budget, self.compression_ratio, self.window,
                          self.decode_budget, interval, self.chunk_size)

    def layer_allocation(self):
        """The layer allocation object (static or cascade)."""
        return self.resolve().layers

    def allocate_heads(self, scores: torch.Tensor, budget: torch.Tensor, configured: torch.Tensor) -> torch.Tensor:
        """Apply the head allocation: ``scores [batch, kv_heads, tokens]``, ``budget [batch]`` -> keep mask."""
        return self.resolve().heads(scores, budget, self.window, configured)

    def attach(self, model) -> Session:
        """Install this method on ``model``; use as ``with m.attach(model) as session:``."""
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
            "decode_budget": self.decode_budget,
            "decode_interval": self.decode_interval,
            "chunk_size": self.chunk_size,
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
    window: int | None = None,
    decode_budget: int | None = None,
    decode_interval: int | None = None,
    chunk_size: int | None = None,
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
        if decode_budget is not None or decode_interval is not None or chunk_size is not None:
            raise ValueError("method 'full' does not compress: decode_budget / decode_interval / chunk_size need a "
                             "compressing method (e.g. lavakv.method('lava', budget=256, decode_budget=512))")
        if budget is not None or compression_ratio is not None or scorer or layers or heads or params:
            raise ValueError("method 'full' does not compress: give it no budget, ratio, components or parameters")
        if window is not None:
            raise ValueError("method 'full' does not compress, so it has no observation window: drop window=")
        return Method("full", None, None, None, None, None, DEFAULT_WINDOW)
    window = DEFAULT_WINDOW if window is None else window
    preset = PRESETS[name] if name is not None else (scorer, "uniform", "uniform")
    scorer = scorer or preset[0]
    layers = layers or preset[1]
    heads = heads or preset[2]
    _check_components(scorer, layers, heads)
    validate_budget(budget, compression_ratio, window)
    decode_interval = validate_decode_budget(decode_budget, decode_interval, budget, window)
    validate_chunk_size(chunk_size, window)
    defaults = {**scorer_defaults(scorer), **_fields(LAYER_ALLOCATIONS[layers]), **_fields(HEAD_ALLOCATIONS[heads])}
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise TypeError(
            f"unknown parameter(s) {', '.join(unknown)} for scorer={scorer}, layers={layers}, heads={heads}; "
            f"valid: {', '.join(sorted(defaults)) or 'none'}"
        )
    resolved = {**defaults, **params}
    is_preset = name is not None and (scorer, layers, heads) == preset
    m = Method(name if is_preset else "custom", scorer, layers, heads, budget, compression_ratio, window, resolved,
               decode_budget, decode_interval, chunk_size)
    return m  # made valid: Method.__post_init__ resolves (checks) every setting


def describe(name: str) -> dict[str, Any]:
    """The components and default parameters a preset resolves to (no budget set), and ``notes``: per parameter,
    what it does and where its default comes from (the baseline's own code, the paper, or lavakv; see
    ``lavakv describe``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(PRESETS)}")
    if PRESETS[name] is None:
        return {"name": "full", "scorer": None, "layers": None, "heads": None, "params": {}, "notes": {}}
    info = method(name, budget=10**9, window=1).describe()
    for key in ("budget", "compression_ratio", "window", "decode_budget", "decode_interval", "chunk_size"):
        info.pop(key)
    info["notes"] = {o.name: f"{o.meaning} (default from {o.source})"
                     for o in describe_options(info["scorer"], info["layers"], info["heads"], info["params"])}
    return info
