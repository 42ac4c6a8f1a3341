"""Compress a base model once and cache it: prune (SparseGPT / Wanda / magnitude), then LLM.int8().

A compressed model is a plain Hugging Face folder (dense safetensors; int8 weights for LLM.int8()) under
``MOPS_HOME/compressed/<base>/<settings key>/``, so every part of mops (and any other tool) loads it like
a base model. The folder holds ``mops_compression.json``: settings, measured sparsity per matrix and layer,
the N:M check, bytes on disk and in memory, seconds taken and, once evaluated, test PPL before and after.
"""

from __future__ import annotations

import hashlib
import platform
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import AutoTokenizer

from mops.compression.calibration import calibration_dataset
from mops.compression.config import CompressionConfig
from mops.compression.pruning import prune_model
from mops.compression.quantization import quantize_int8_folder
from mops.models.report import REPORT_FILE, read_compression_report, write_compression_report
from mops.compression.stats import folder_bytes, sparsity_report
from mops.models.fingerprint import weights_digest
from mops.models.loading import (
    load_base_model, quiet_transformers, resolve_device, resolve_model_path, source_fingerprint,
)
from mops.paths import atomic_folder, cache_dir


@dataclass
class CompressedModel:
    """A compressed model folder and its report."""

    path: Path
    report: dict


def base_key(name_or_path: str) -> str:
    """Cache key of a base model: its short name, or a folder/hub name plus a hash of the full spec."""
    from mops.models.registry import PACKAGED_MODELS

    if name_or_path in PACKAGED_MODELS:
        return name_or_path
    spec = str(Path(name_or_path).expanduser().resolve()) if Path(name_or_path).expanduser().exists() else name_or_path
    return f"{Path(spec).name}-{hashlib.sha1(spec.encode()).hexdigest()[:8]}"


def compressed_path(base: str, cfg: CompressionConfig) -> Path:
    return cache_dir("compressed") / base_key(base) / cfg.key


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _prune(base: str, cfg: CompressionConfig, device: str, folder: Path) -> tuple[float, float, int]:
    """Prune a float copy of `base` into `folder`; returns (seconds pruning, 0, calibration sequences)."""
    loaded = load_base_model(base, dtype="float32", device=device)
    calibration = None
    if cfg.calibrated:
        calibration = calibration_dataset(loaded.tokenizer, cfg.calib_data, cfg.calib_samples, cfg.calib_length,
                                          cfg.calib_seed)
    t0 = time.perf_counter()
    prune_model(loaded.model, loaded.tokenizer, cfg, calibration)
    seconds = time.perf_counter() - t0
    # The class method, not the instance attribute: llm-compressor wraps the instance's save_pretrained
    # to write its own sparse format; we keep a plain dense folder that anything can load.
    with quiet_transformers():
        type(loaded.model).save_pretrained(loaded.model, str(folder))
        loaded.tokenizer.save_pretrained(str(folder))
    return seconds, 0.0, len(calibration) if calibration is not None else 0


def _quantize(base: str, cfg: CompressionConfig, device: str, folder: Path) -> tuple[float, float, int]:
    """LLM.int8() of the pruned float model (itself built once and cached) or of the base, into `folder`.

    Returns the pruning seconds of the float model (0 without pruning; measured when it was built), the int8
    seconds, and the calibration sequences.
    """
    source, prune_s, calibrated = Path(resolve_model_path(base)), 0.0, 0
    if cfg.prune != "none":
        pruned = compress_model(base, replace(cfg, int8=False), device=device)
        source, prune_s, calibrated = pruned.path, pruned.report["seconds"]["prune"], pruned.report["calibration_sequences"]
    t0 = time.perf_counter()
    with quiet_transformers():
        quantize_int8_folder(source, folder)
        AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(folder))
    return prune_s, time.perf_counter() - t0, calibrated


def compress_model(base: str, cfg: CompressionConfig, device: str = "auto", force: bool = False) -> CompressedModel:
    """Build (or reuse from the cache) the compressed copy of `base`; returns its folder and report.

    `force` rebuilds even when a finished folder exists. Errors leave no folder behind.
    """
    target = compressed_path(base, cfg)
    if force:
        shutil.rmtree(target, ignore_errors=True)
    report = read_compression_report(target)
    if report:
        return CompressedModel(target, report)
    with atomic_folder(target, REPORT_FILE) as tmp:
        prune_s, int8_s, calibrated = (_quantize if cfg.int8 else _prune)(base, cfg, device, tmp)
        report = {
            "base": base, "label": cfg.label, "config": cfg.to_dict(),
            "device": _device_name(resolve_device(device)),
            "seconds": {"prune": round(prune_s, 2), "int8": round(int8_s, 2), "total": round(prune_s + int8_s, 2)},
            "calibration_sequences": calibrated,
        }
        write_compression_report(tmp, report)  # lets the reload below see it is an int8 folder
        reloaded = load_base_model(str(tmp), dtype="float32", device=device)
        report["sparsity"] = sparsity_report(reloaded.model, cfg.pattern)
        report["bytes"] = {"disk": folder_bytes(tmp), "memory": reloaded.model.get_memory_footprint()}
        report["base_fingerprint"] = source_fingerprint(resolve_model_path(base))
        report["fingerprint"] = weights_digest(tmp)
        write_compression_report(tmp, report)
    return CompressedModel(target, read_compression_report(target))

