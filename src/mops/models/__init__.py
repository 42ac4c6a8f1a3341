"""Base models: short names, GGUF conversion and loading."""

from mops.models.loading import BaseModel, load_base_model, resolve_device, resolve_dtype
from mops.models.registry import DEFAULT_MODEL, PACKAGED_MODELS

__all__ = ["DEFAULT_MODEL", "PACKAGED_MODELS", "BaseModel", "load_base_model", "resolve_device", "resolve_dtype"]
