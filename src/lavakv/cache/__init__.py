"""The compressed KV cache: per-layer dense or ragged per-head storage (a transformers ``Cache``)."""

from lavakv.cache.compressed import CompressedCache, CompressedLayer
from lavakv.cache.storage import DenseKV, RaggedKV, compact

__all__ = ["CompressedCache", "CompressedLayer", "DenseKV", "RaggedKV", "compact"]
