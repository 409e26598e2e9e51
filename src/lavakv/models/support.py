"""Which model families lavakv supports, checked before any work is done."""

from __future__ import annotations

import torch

# config.model_type -> family name; every listed family routes attention through transformers' registry and
# gives its attention modules a ``layer_idx`` (decoder-only causal LMs with RoPE applied before the cache).
SUPPORTED_MODEL_TYPES = {
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2 / Qwen2.5",
    "qwen3": "Qwen3",
    "gemma3_text": "Gemma 3 (text; only full-attention layers are compressed, sliding-window layers are left alone)",
}


def check_supported(model: torch.nn.Module) -> None:
    """Raise ``TypeError`` naming the model class unless lavakv supports it."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        names = ", ".join(SUPPORTED_MODEL_TYPES.values())
        raise TypeError(
            f"lavakv does not support {type(model).__name__} (model_type={model_type!r}); supported decoder "
            f"families: {names}. Load one of those with AutoModelForCausalLM."
        )
    if not hasattr(model, "set_attn_implementation"):
        raise TypeError(f"{type(model).__name__} is not a transformers PreTrainedModel; pass the loaded model itself")
    # e.g. LlamaModel (no logits) or LlamaForSequenceClassification; a subclass of a *ForCausalLM class is fine
    if not any(cls.__name__.endswith("ForCausalLM") for cls in type(model).__mro__):
        raise TypeError(
            f"lavakv compresses the cache of a causal language model; {type(model).__name__} is not one. Load the "
            "model with AutoModelForCausalLM"
        )
