"""A base model as a run asks for it: `name_or_path`, compressed first when a `CompressionConfig` is given."""

from __future__ import annotations

from mops.compression.compress import compress_model
from mops.compression.config import CompressionConfig
from mops.models.loading import BaseModel, load_base_model, resolve_device, resolve_dtype


def load_model(name_or_path: str, compression: CompressionConfig | None = None, dtype: str = "auto",
               device: str = "auto") -> BaseModel:
    """The frozen base; with `compression` it is compressed first (built once, then read from the cache) and
    keeps its uncompressed name, with the compression's label and settings (calibration included) recorded."""
    if compression is None:
        return load_base_model(name_or_path, dtype=dtype, device=device)
    resolve_dtype(dtype, resolve_device(device))  # setting errors before any compression
    folder = compress_model(name_or_path, compression, device=device).path
    return load_base_model(str(folder), dtype=dtype, device=device, name=name_or_path)
