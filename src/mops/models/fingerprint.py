"""Fingerprints of weights: a SHA-256 over tensor names, dtypes, shapes and bytes.

Two bases with the same fingerprint compute the same numbers; results, stage keys, compression reports and
adapters record it, so a base converted differently (another transformers version, another calibration) is
seen instead of silently mixed. Why by hand: safetensors and the hub hash files, not tensors, and a file hash
changes with sharding and metadata while the weights stay the same.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open

from mops.paths import cache_dir


def _update(digest: "hashlib._Hash", name: str, tensor: torch.Tensor) -> None:
    digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
    digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of named tensors, independent of their order in the mapping."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        _update(digest, name, tensors[name])
    return digest.hexdigest()


def weights_digest(folder: Path) -> str | None:
    """Fingerprint of the weights in a model folder (all `*.safetensors` files, any sharding); None without any."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    readers = [safe_open(str(f), framework="pt") for f in files]
    owner = {name: reader for reader in readers for name in reader.keys()}
    for name in sorted(owner):
        _update(digest, name, owner[name].get_tensor(name))
    return digest.hexdigest()


def folder_fingerprint(folder: Path) -> str | None:
    """`weights_digest`, cached under MOPS_HOME/fingerprints by the files' paths, sizes and modification times
    (a 500 MB model is read once)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    stamp = json.dumps([[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files])
    memo = cache_dir("fingerprints") / f"{hashlib.sha256(stamp.encode()).hexdigest()[:32]}.txt"
    if memo.is_file():
        return memo.read_text().strip()
    value = weights_digest(folder)
    memo.write_text(value or "")
    return value
