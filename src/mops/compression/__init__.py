"""Compression of base models: SparseGPT / Wanda / magnitude pruning (unstructured or N:M) and LLM.int8()."""

from mops.compression.compress import CompressedModel, compress_model, compressed_path
from mops.compression.config import PRUNE_METHODS, CompressionConfig, parse_pattern
from mops.compression.load import load_model
from mops.models.report import REPORT_FILE, read_compression_report

__all__ = [
    "PRUNE_METHODS", "REPORT_FILE", "CompressedModel", "CompressionConfig", "compress_model", "compressed_path",
    "load_model", "parse_pattern", "read_compression_report",
]
