"""Deterministic data order: the examples of any step follow from (seed, step) alone, so resuming is exact."""

from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return tuple(torch.randperm(n, generator=gen).tolist())


def step_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Example indices of global step `step` (0-based): consecutive slices of per-epoch permutations."""
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, i = divmod(pos, n)
        out.append(_permutation(n, seed, epoch)[i])
    return out


def shard(indices: list[int], rank: int, world: int, grad_accum: int) -> list[list[int]]:
    """This process's share of a global batch, split into `grad_accum` micro-batches."""
    mine = indices[rank::world]
    size = -(-len(mine) // grad_accum)
    return [mine[i : i + size] for i in range(0, len(mine), size)]
