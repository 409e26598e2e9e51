"""lavakv: layer-wise KV-cache eviction with dynamic budgets (LAVa) and the field's baselines, with real memory
savings, for Hugging Face causal language models."""

from lavakv.cache import CompressedCache
from lavakv.generation import GenerationResult, generate
from lavakv.methods import Method, describe, list_methods, method
from lavakv.models import load_model
from lavakv.runtime import Session, SessionStats
from lavakv.runtime.context import CompressedContext
from lavakv.runtime.session import attach

__version__ = "0.1.0"

__all__ = [
    "CompressedCache",
    "CompressedContext",
    "GenerationResult",
    "Method",
    "Session",
    "SessionStats",
    "__version__",
    "attach",
    "describe",
    "generate",
    "list_methods",
    "load_model",
    "method",
]
