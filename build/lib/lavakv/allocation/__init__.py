"""Budget allocation across layers and across the KV heads of a layer (METHODS.md §2-3)."""

from lavakv.allocation.heads import adaptive_heads, uniform_heads
from lavakv.allocation.layers import LAYER_ALLOCATIONS, CakeCascade, EntropyCascade, PyramidLayers, UniformLayers

HEAD_ALLOCATIONS = {"uniform": uniform_heads, "adaptive": adaptive_heads}

__all__ = [
    "HEAD_ALLOCATIONS",
    "LAYER_ALLOCATIONS",
    "CakeCascade",
    "EntropyCascade",
    "PyramidLayers",
    "UniformLayers",
    "adaptive_heads",
    "uniform_heads",
]
