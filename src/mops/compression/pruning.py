"""Pruning: SparseGPT and Wanda through llm-compressor's one-shot entry point; magnitude by hand.

Magnitude pruning is written here (a few lines of `topk`) because llm-compressor's
`MagnitudePruningModifier` is a gradual, training-time schedule: under `oneshot` it leaves the weights
untouched (measured), and its mask factory has no N:M structure. Every method prunes the same matrices:
the `nn.Linear` layers of the decoder blocks (`prunable_linears`), never embeddings or the LM head.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mops.compression.config import CompressionConfig, parse_pattern
from mops.models.loading import quiet_transformers

if TYPE_CHECKING:  # annotations only: mops train runs without datasets
    from datasets import Dataset


def prunable_linears(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Linear layers inside the decoder (name -> module); the LM head is excluded."""
    out = {}
    for name, module in model.named_modules():
        if name.endswith("lm_head") or not hasattr(module, "weight") or module.weight is None:
            continue
        if isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear8bitLt", "Linear4bit"):
            out[name] = module
    return out


@torch.no_grad()
def magnitude_prune_(weight: torch.Tensor, sparsity: float, pattern: str | None = None) -> None:
    """Zero the smallest-|w| entries of `weight` [out, in] in place.

    Unstructured: exactly `int(numel * sparsity)` entries of the whole matrix. N:M: in every group of M
    consecutive input weights of a row, the N smallest (`in` must be a multiple of M).
    """
    if pattern is None:
        k = int(weight.numel() * sparsity)
        if k:
            weight.view(-1)[weight.abs().view(-1).topk(k, largest=False).indices] = 0
        return
    n, m = parse_pattern(pattern)
    rows, cols = weight.shape
    if cols % m:
        raise ValueError(f"N:M pruning needs the input width ({cols}) to be a multiple of M={m}")
    groups = weight.view(rows, cols // m, m)
    drop = groups.abs().topk(n, dim=-1, largest=False).indices
    groups.scatter_(-1, drop, 0.0)


@contextmanager
def _quiet_llmcompressor() -> Iterator[None]:
    """llm-compressor logs every layer (loguru); keep its per-layer progress bars and our errors only."""
    # Read when llmcompressor is first imported. Its logger writes to STDOUT (it would corrupt `--json`);
    # "disabled" would crash its metric logging, so raise the level instead.
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    from loguru import logger

    logger.disable("compressed_tensors")
    with quiet_transformers():
        yield


def _oneshot(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: CompressionConfig,
             calibration: Dataset) -> None:
    """Run llm-compressor's SparseGPT or Wanda on `model` in place (sequential, layer by layer)."""
    with _quiet_llmcompressor():
        from llmcompressor import oneshot
        from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

        modifier_cls = SparseGPTModifier if cfg.prune == "sparsegpt" else WandaPruningModifier
        modifier = modifier_cls(
            sparsity=cfg.sparsity,
            mask_structure=cfg.pattern or "0:0",
            targets=["Linear"],
            ignore=["re:.*lm_head"],
        )
        oneshot(
            model=model,
            tokenizer=tokenizer,
            dataset=calibration,
            recipe=[modifier],
            num_calibration_samples=len(calibration),
            max_seq_length=cfg.calib_length,
            shuffle_calibration_samples=False,
        )


def prune_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: CompressionConfig, calibration: Dataset | None
) -> None:
    """Prune `model` in place as `cfg` says (no-op for ``prune="none"``)."""
    if cfg.prune == "none":
        return
    if cfg.prune == "magnitude":
        for module in prunable_linears(model).values():
            magnitude_prune_(module.weight.data, cfg.sparsity, cfg.pattern)
        return
    if calibration is None:
        raise ValueError(f"{cfg.prune} needs calibration data")
    _oneshot(model, tokenizer, cfg, calibration)
