"""Measured facts about a compressed model: sparsity per matrix, N:M check, bytes on disk."""

from __future__ import annotations

from pathlib import Path

import torch

from mops.compression.config import parse_pattern
from mops.compression.pruning import prunable_linears


def nm_violations(weight: torch.Tensor, pattern: str) -> int:
    """Groups of M consecutive input weights (per row) with fewer than N zeros; 0 means the pattern holds."""
    n, m = parse_pattern(pattern)
    rows, cols = weight.shape
    if cols % m:
        return rows * (cols // m + 1)
    zeros = (weight.reshape(rows, cols // m, m) == 0).sum(-1)
    return int((zeros < n).sum())


def sparsity_report(model: torch.nn.Module, pattern: str | None = None) -> dict:
    """Zero fraction of every prunable matrix, overall (weighted by size), per decoder layer, and N:M check.

    Returns ``{"overall", "matrices": {name: {"shape", "sparsity"}}, "per_layer": {index: sparsity},
    "nm_pattern", "nm_verified", "nm_violations"}``; the N:M fields are present only for a pattern.
    """
    matrices, zeros_by_layer, size_by_layer = {}, {}, {}
    total_zeros = total = violations = 0
    for name, module in prunable_linears(model).items():
        w = module.weight.data  # [out, in]; int8 codes for LLM.int8() layers (zero stays zero)
        z = int((w == 0).sum())
        matrices[name] = {"shape": list(w.shape), "sparsity": z / w.numel()}
        total_zeros, total = total_zeros + z, total + w.numel()
        layer = next((p for p in name.split(".") if p.isdigit()), "other")
        zeros_by_layer[layer] = zeros_by_layer.get(layer, 0) + z
        size_by_layer[layer] = size_by_layer.get(layer, 0) + w.numel()
        if pattern is not None:
            violations += nm_violations(w, pattern)
    report = {
        "overall": total_zeros / max(total, 1),
        "pruned_parameters": total,
        "per_layer": {k: zeros_by_layer[k] / size_by_layer[k] for k in zeros_by_layer},
        "matrices": matrices,
    }
    if pattern is not None:
        report.update(nm_pattern=pattern, nm_verified=violations == 0, nm_violations=violations)
    return report


def folder_bytes(path: Path) -> int:
    """Bytes of the weight files (``*.safetensors``) in a model folder."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))

