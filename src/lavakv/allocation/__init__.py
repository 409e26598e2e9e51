"""Budget allocation across layers and across the KV heads of a layer (docs/methods.md).

Allocations are pure functions of tensors: budgets and keep masks from scores and per-layer statistics.
"""

from lavakv.allocation.heads import HEAD_ALLOCATIONS, AdaptiveHeads, UniformHeads, adaptive_heads, uniform_heads
from lavakv.allocation.layers import LAYER_ALLOCATIONS, CakeCascade, EntropyCascade, PyramidLayers, UniformLayers

__all__ = [
    "HEAD_ALLOCATIONS",
    "LAYER_ALLOCATIONS",
    "AdaptiveHeads",
    "CakeCascade",
    "EntropyCascade",
    "PyramidLayers",
    "UniformHeads",
    "UniformLayers",
    "adaptive_heads",
    "uniform_heads",
]
