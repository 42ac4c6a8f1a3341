"""The paper's data selection: balanced per task, de-duplicated, seeded; deterministic train/test split."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence

from mops.data.example import Example
from mops.errors import DataError


def deduplicate(examples: Sequence[Example]) -> list[Example]:
    """Keep the first occurrence of each (instruction, input, output)."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for ex in examples:
        if ex.key not in seen:
            seen.add(ex.key)
            out.append(ex)
    return out


def group_by_task(examples: Sequence[Example]) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        groups[ex.task].append(ex)
    return dict(groups)


def first_per_task(examples: Sequence[Example], n: int) -> list[Example]:
    """The first `n` examples of each task, tasks in order of first appearance."""
    return [ex for group in group_by_task(examples).values() for ex in group[:n]]


def balanced_quotas(available: dict[str, int], total: int) -> dict[str, int]:
    """Split `total` over tasks as evenly as their sizes allow (water filling); sums to min(total, sum).

    Smallest tasks first: each takes its fair share of what is left, or all it has.
    """
    quotas: dict[str, int] = {}
    remaining = min(total, sum(available.values()))
    order = sorted(available, key=lambda t: (available[t], t))
    for i, task in enumerate(order):
        quotas[task] = min(available[task], remaining // (len(order) - i))
        remaining -= quotas[task]
    return quotas


def select_balanced(
    examples: Sequence[Example], tasks: Sequence[str] | None, total: int | None, seed: int
) -> list[Example]:
    """De-duplicate, keep `tasks` (in that order; all tasks if None), take up to `total` balanced, seeded."""
    groups = group_by_task(deduplicate(examples))
    if tasks is None:
        tasks = sorted(groups)
    unknown = [t for t in tasks if t not in groups]
    if unknown:
        raise DataError(f"unknown task(s) {unknown}: the data has {sorted(groups)}")
    rng = random.Random(seed)
    pools = {}
    for task in tasks:
        pool = list(groups[task])
        rng.shuffle(pool)
        pools[task] = pool
    quotas = balanced_quotas({t: len(p) for t, p in pools.items()}, total if total is not None else 10**12)
    return [ex for task in tasks for ex in pools[task][: quotas[task]]]


def train_test_split(
    examples: Sequence[Example], test_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Stratified by task: each task keeps round(n * test_fraction) (>= 1 when n >= 2) examples for test."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    train, test = [], []
    rng = random.Random(seed + 1)
    for task, group in group_by_task(examples).items():
        order = sorted(group, key=lambda ex: ex.key)  # independent of input order
        rng_task = random.Random(f"{seed}:{task}")
        rng_task.shuffle(order)
        n_test = max(1, round(len(order) * test_fraction)) if len(order) >= 2 else 0
        test.extend(order[:n_test])
        train.extend(order[n_test:])
    rng.shuffle(train)
    return train, test
