"""Deterministic data order: the examples of any step follow from (seed, step) alone, so resuming is exact.

With `lengths`, batches are grouped by length (less padding, the usual "group by length"): the examples of
`window` consecutive batches are sorted by length, cut into batches, and the batches shuffled (seeded).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch


@lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return tuple(torch.randperm(n, generator=gen).tolist())


def _stream(n: int, start: int, stop: int, seed: int) -> list[int]:
    """Positions start..stop-1 of the endless stream of per-epoch permutations."""
    out = []
    for pos in range(start, stop):
        epoch, i = divmod(pos, n)
        out.append(_permutation(n, seed, epoch)[i])
    return out


@lru_cache(maxsize=2)
def _window(n: int, batch_size: int, seed: int, lengths: tuple[int, ...], window: int, w: int) -> list[list[int]]:
    span = window * batch_size
    members = sorted(_stream(n, w * span, (w + 1) * span, seed), key=lambda i: lengths[i])
    batches = [members[i : i + batch_size] for i in range(0, span, batch_size)]
    order = torch.randperm(window, generator=torch.Generator().manual_seed(seed * 7_919 + w)).tolist()
    return [batches[j] for j in order]


def step_indices(
    n: int, batch_size: int, step: int, seed: int, lengths: Sequence[int] | None = None, window: int = 64
) -> list[int]:
    """Example indices of global step `step` (0-based); grouped by length when `lengths` is given."""
    if lengths is None:
        return _stream(n, step * batch_size, (step + 1) * batch_size, seed)
    return _window(n, batch_size, seed, tuple(lengths), window, step // window)[step % window]


def shard(indices: list[int], rank: int, world: int, grad_accum: int) -> list[list[int]]:
    """This process's share of a global batch, split into `grad_accum` micro-batches."""
    mine = indices[rank::world]
    size = -(-len(mine) // grad_accum)
    return [mine[i : i + size] for i in range(0, len(mine), size)]
