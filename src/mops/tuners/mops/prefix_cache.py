"""Frozen-prefix activation cache: the hidden states entering the injection layer, computed once per example.

Below the injection layer everything is frozen (weights and input prompts), so these states depend only on
the example. They are stored memory-mapped on disk under ``MOPS_HOME/activations/<key>``, keyed by the base
model (identity, path, a weight fingerprint), the input prompts, the injection layer, the storage dtype and
the token ids of every example; baseline and MoPs runs, sweeps above the layer, repeated evaluations and
federated clients over the same data all share one cache. The gate input (mean over slots + tokens) is
stored beside them in fp32.

Why by hand: no library caches per-example intermediate activations of a HF model for reuse across runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mops.data.batching import collate, length_sorted_batches
from mops.data.tokenization import Encoded
from mops.errors import ConfigError
from mops.models.logits import LogitsFn
from mops.paths import cache_dir
from mops.progress import progress_bar
from mops.tuners.mops.model import MoPModel

VERSION = 1
STORE = {"float32": (torch.float32, np.float32), "bfloat16": (torch.bfloat16, np.uint16),
         "float16": (torch.float16, np.float16)}


def _store_name(dtype: torch.dtype) -> str:
    return {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]


def cache_key(model: MoPModel, encoded: Sequence[Encoded], store: str, frozen: str = "") -> str:
    """Hex digest of everything the cached states depend on; `frozen`: a digest of frozen weights added inside
    the base (a finished LoRA that MoPs trains on), which change the states below the injection layer."""
    digest = hashlib.sha256()
    below = [model.lm.get_input_embeddings().weight]
    if model.config.injection_layer > 0:
        below += list(model.layers[model.config.injection_layer - 1].parameters())
    header = {"v": VERSION, "base": model.base.identity, "path": model.base.path, "layer": model.config.injection_layer,
              "weights": [float(p.detach().double().sum()) for p in below],
              "input_prompts": model.config.num_input_prompts, "store": store, "n": len(encoded),
              "gate_input": model.config.gate_input} | ({"frozen": frozen} if frozen else {})
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(model.input_prompts.detach().float().cpu().numpy().tobytes())
    for enc in encoded:
        digest.update(np.asarray(enc.input_ids, dtype=np.int32).tobytes() + b"|")
    return digest.hexdigest()[:24]


class PrefixCache:
    """Per-example hidden states entering the injection layer, filled lazily on first use.

    Layout of the cache folder: ``meta.json`` (store dtype, width, per-example lengths), ``hidden.bin``
    (all examples' token states back to back, a sparse memory-mapped file), ``avg_emb.bin`` (N, d) fp32 gate
    inputs, ``filled.bin`` (N,) flags. Rows are computed the first time a batch needs them, so a short run
    pays only for the examples it sees; `fill` computes them all up front.
    """

    def __init__(self, model: MoPModel, encoded: Sequence[Encoded], folder: Path, pad_id: int) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        self.model, self.encoded, self.folder, self.pad_id = model, encoded, folder, pad_id
        self.lengths = np.asarray(meta["lengths"], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.torch_dtype, np_dtype = STORE[meta["store"]]
        rows, width = max(1, int(self.lengths.sum())), meta["width"]
        self.hidden = np.memmap(folder / "hidden.bin", dtype=np_dtype, mode="r+", shape=(rows, width))
        self.avg = np.memmap(folder / "avg_emb.bin", dtype=np.float32, mode="r+", shape=(len(self.lengths), width))
        self.filled = np.memmap(folder / "filled.bin", dtype=np.uint8, mode="r+", shape=(len(self.lengths),))

    @property
    def nbytes(self) -> int:
        """Bytes on disk actually used (the hidden-state file is sparse until filled)."""
        return sum(os.stat(self.folder / f).st_blocks * 512 for f in ("hidden.bin", "avg_emb.bin", "filled.bin"))

    @torch.no_grad()
    def _compute(self, indices: Sequence[int]) -> None:
        b = collate([self.encoded[i] for i in indices], self.pad_id)
        device = self.model.expert_prompts.device
        mask = b["attention_mask"].to(device)
        gate_mask = self.model.gate_token_mask(mask, b["labels"].to(device))
        states, avg_emb = self.model.prefix_states(b["input_ids"].to(device), mask, gate_mask)
        states = states.to(self.torch_dtype).cpu()
        for row, i in enumerate(indices):
            chunk = states[row, : self.lengths[i]]
            chunk = chunk.view(torch.int16) if self.torch_dtype == torch.bfloat16 else chunk
            self.hidden[self.offsets[i] : self.offsets[i] + self.lengths[i]] = chunk.numpy().view(self.hidden.dtype)
            self.avg[i] = avg_emb[row].float().cpu().numpy()
        self.filled[list(indices)] = 1

    def fill(self, batch_size: int = 8, progress: bool = False) -> "PrefixCache":
        """Compute every missing row now (length-sorted batches)."""
        missing = [i for i in range(len(self.lengths)) if not self.filled[i]]
        batches = list(length_sorted_batches([int(self.lengths[i]) for i in missing], batch_size))
        with progress_bar(len(batches), "prefix cache", enabled=progress) as advance:
            for batch in batches:
                self._compute([missing[j] for j in batch])
                advance()
        self.flush()
        return self

    def flush(self) -> None:
        for arr in (self.hidden, self.avg, self.filled):
            arr.flush()

    def gate_inputs(self, indices: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """avg_emb (B, d) of `indices` (computing missing rows first), without reading the token states."""
        indices = list(indices)
        missing = [i for i in indices if not self.filled[i]]
        for start in range(0, len(missing), 8):
            self._compute(missing[start : start + 8])
        return torch.from_numpy(np.array(self.avg[indices])).to(device)

    def states(self, indices: Sequence[int], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """-> token states (B, T, d) right-padded with zeros, avg_emb (B, d); computes missing rows first.

        One gather from the memory map for the whole batch, scattered into the padded tensor by a mask; for a
        GPU the host tensor is pinned and copied asynchronously."""
        indices = list(indices)
        avg = self.gate_inputs(indices, device)
        lengths = torch.from_numpy(self.lengths[indices])
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i] + self.lengths[i]) for i in indices])
        flat = torch.from_numpy(np.asarray(self.hidden[rows]))  # (sum of lengths, d)
        flat = flat.view(self.torch_dtype) if self.torch_dtype == torch.bfloat16 else flat
        out = torch.zeros(len(indices), int(lengths.max()), self.hidden.shape[1], dtype=self.torch_dtype)
        out[torch.arange(out.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)] = flat
        cuda = torch.device(device).type == "cuda"
        return (out.pin_memory() if cuda else out).to(device, non_blocking=cuda), avg


def open_prefix_cache(
    model: MoPModel, encoded: Sequence[Encoded], pad_id: int, store: str | None = None, root: Path | None = None,
    frozen: str = "",
) -> PrefixCache:
    """Open (creating if needed) the cache for `encoded`. `store`: float32 / bfloat16 / float16; default: the
    model's dtype, which makes cached training exactly equal to uncached training. `frozen`: see `cache_key`."""
    store = store or _store_name(model.lm.dtype)
    if store not in STORE:
        raise ConfigError(f"cache dtype must be one of {sorted(STORE)}, got {store!r}")
    folder = (root or cache_dir("activations")) / cache_key(model, encoded, store, frozen)
    if not (folder / "meta.json").is_file():
        tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        lengths = [len(e.input_ids) for e in encoded]
        width = model.lm.config.hidden_size
        sizes = {"hidden.bin": max(1, sum(lengths)) * width * np.dtype(STORE[store][1]).itemsize,
                 "avg_emb.bin": len(lengths) * width * 4, "filled.bin": len(lengths)}
        for name, size in sizes.items():  # sparse files: disk is used only for rows written
            with open(tmp / name, "wb") as f:
                f.truncate(size)
        (tmp / "meta.json").write_text(json.dumps({"store": store, "width": width, "lengths": lengths}))
        try:
            os.rename(tmp, folder)
        except OSError:  # another process created it first
            shutil.rmtree(tmp, ignore_errors=True)
    return PrefixCache(model, encoded, folder, pad_id)


def mop_logits_fn(model: MoPModel, cache: PrefixCache | None = None) -> LogitsFn:
    """The MoP model as a `LogitsFn`: from the prefix cache when given (batches carry ``index``), else full."""
    if cache is None:
        return lambda b, positions: model(b["input_ids"], b["attention_mask"], positions,
                                          model.gate_token_mask(b["attention_mask"], b.get("labels")))

    def cached(b: dict, positions: torch.Tensor) -> torch.Tensor:
        states, avg_emb = cache.states(b["index"], b["input_ids"].device)  # (B, T, d), (B, d)
        return model.forward_cached(states, b["attention_mask"], avg_emb, positions)

    return cached
