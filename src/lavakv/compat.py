"""What differs between the transformers releases lavakv supports (the range is in pyproject.toml).

* 5.24 renamed the cache argument of ``model(...)``, ``model.generate(...)`` and of the decoder and attention layers
  from ``past_key_values`` to ``cache``. 5.24 still takes the old name (with a FutureWarning, until 5.40); earlier
  releases know only ``past_key_values``: their ``generate`` rejects ``cache=`` and their ``forward`` never reads it
  (lavakv's cache is not used). Call ``model(ids, **cache_kwargs(cache))`` and
  ``model.generate(ids, **cache_kwargs(cache))``; read a cache out of a hook's keyword arguments with
  :func:`cache_from`.
* ``transformers.cache_utils.get_layer_types_and_kwargs`` and ``DYNAMIC_LAYER_TYPE_MAPPING`` exist from 5.14, and
  the former returned one kwargs dict shared by all layers before 5.19 (a list with one dict per layer since):
  :func:`layer_types_and_kwargs` and :func:`dynamic_layer` give 5.24's behaviour on every supported release.
* ``GgufConfig`` exists from 5.17 (before, ``from_pretrained(gguf_file=...)`` always dequantized):
  :func:`gguf_dequantize_kwargs`.

Differences that need no helper (see the notes at their use): ``CacheLayerMixin``'s abstract ``get_max_length``
was named ``get_max_cache_shape`` before 5.13; ``DynamicSlidingWindowLayer``'s first positional parameter was
``config`` in 5.8 - 5.13 (pass ``sliding_window=`` by keyword).
"""

from __future__ import annotations

from importlib.metadata import version as _distribution_version
from typing import Any

from packaging.version import Version

TRANSFORMERS_VERSION = Version(_distribution_version("transformers"))

#: the keyword under which this transformers takes a KV cache (model forward, generate, decoder and attention layers)
CACHE_KWARG = "cache" if TRANSFORMERS_VERSION >= Version("5.24.0.dev0") else "past_key_values"


def cache_kwargs(cache: Any) -> dict[str, Any]:
    """``{CACHE_KWARG: cache}``, to spread into a model or ``generate`` call."""
    return {CACHE_KWARG: cache}


def cache_from(kwargs: dict[str, Any]) -> Any:
    """The cache in a forward call's keyword arguments, under either name, or None."""
    cache = kwargs.get("cache")
    return cache if cache is not None else kwargs.get("past_key_values")


def layer_types_and_kwargs(text_config: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Per decoder layer that holds a cache: its layer type and the kwargs of its dynamic cache layer.

    As ``get_layer_types_and_kwargs`` of transformers 5.24 (one kwargs dict per layer) on every supported release.
    ``text_config`` is the decoder's config (``config.get_text_config(decoder=True)``).
    """
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs
    except ImportError:  # before 5.14: what DynamicCache(config=...) did itself
        return _layer_types_and_kwargs_before_5_14(text_config)
    layer_types, layer_kwargs = get_layer_types_and_kwargs(text_config)
    if isinstance(layer_kwargs, dict):  # 5.14 - 5.18: one dict for all layers
        layer_kwargs = [dict(layer_kwargs) for _ in layer_types]
    return list(layer_types), list(layer_kwargs)


def _layer_types_and_kwargs_before_5_14(text_config: Any) -> tuple[list[str], list[dict[str, Any]]]:
    window = getattr(text_config, "sliding_window", None) or getattr(text_config, "attention_chunk_size", None)
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is None:
        kind = "sliding_attention" if window is not None else "full_attention"
        layer_types = [kind] * text_config.num_hidden_layers
    shared = getattr(text_config, "num_kv_shared_layers", None)
    if shared:
        layer_types = layer_types[:-shared]
    kwargs = [
        {"sliding_window": window} if kind in ("sliding_attention", "chunked_attention") else {}
        for kind in layer_types
    ]
    return list(layer_types), kwargs


def dynamic_layer(text_config: Any, index: int, layer_type: str, kwargs: dict[str, Any]) -> Any:
    """transformers' own dynamic cache layer for decoder layer ``index`` (of ``layer_type``, with ``kwargs`` from
    :func:`layer_types_and_kwargs`), as ``DynamicCache(config=...)`` would make it."""
    try:
        from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING
    except ImportError:  # before 5.14: the layer DynamicCache itself builds for that index
        from transformers.cache_utils import DynamicCache

        return DynamicCache(config=text_config).layers[index]
    return DYNAMIC_LAYER_TYPE_MAPPING[layer_type](**kwargs)


def gguf_dequantize_kwargs() -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that load a GGUF file as a dense model.

    From 5.17 transformers can keep GGUF weights packed and needs ``quantization_config=GgufConfig(dequantize=True)``
    to unpack them; before, it had no ``GgufConfig`` and always dequantized.
    """
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def rope_frequencies(model: Any) -> dict[int, Any]:
    """Layer index -> the RoPE inverse frequencies ``[rotary_dim / 2]`` that layer's queries and keys were rotated
    with; empty when the model has no rotary embedding lavakv recognises.

    One ``rotary_emb`` with ``inv_freq`` serves every layer (Llama, Mistral, Qwen2, Qwen3). Gemma 3 keeps one
    per layer type: ``<layer_type>_inv_freq`` on one module (transformers >= 5.x), or a second module
    ``rotary_emb_local`` for its sliding layers (older releases).
    """
    text_config = model.config.get_text_config(decoder=True)
    layers = int(text_config.num_hidden_layers)
    types = list(getattr(text_config, "layer_types", None) or ["full_attention"] * layers)
    modules = dict(model.named_modules())
    main = next((m for name, m in modules.items() if name.endswith("rotary_emb")), None)
    local = next((m for name, m in modules.items() if name.endswith("rotary_emb_local")), None)
    out: dict[int, Any] = {}
    for index, layer_type in enumerate(types[:layers]):
        source = local if (layer_type == "sliding_attention" and local is not None) else main
        if source is None:
            continue
        freq = getattr(source, f"{layer_type}_inv_freq", None)
        if freq is None:
            freq = getattr(source, "inv_freq", None)
        if freq is not None:
            out[index] = freq.detach().float()
    return out
