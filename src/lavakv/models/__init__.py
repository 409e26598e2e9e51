"""Models: which families lavakv supports, and loading real models offline (packaged GGUF, local dirs, hub ids)."""

from lavakv.models.loading import (
    MODELS,
    ModelNotInstalledError,
    ModelSpec,
    cache_root,
    converted_dir,
    default_model_name,
    install_command,
    is_converted,
    load_model,
)
from lavakv.models.support import SUPPORTED_MODEL_TYPES, check_supported

__all__ = [
    "MODELS",
    "SUPPORTED_MODEL_TYPES",
    "ModelNotInstalledError",
    "ModelSpec",
    "cache_root",
    "check_supported",
    "converted_dir",
    "default_model_name",
    "install_command",
    "is_converted",
    "load_model",
]
