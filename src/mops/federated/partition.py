"""Split the training examples across clients: the paper's skew, IID, or Dirichlet over tasks.

The paper's skew (Appendix A) is written here because no library has it: every task's examples are cut into
`num_clients` partitions, one of them `skew_factor` (15) times larger than each of the others, and every
client receives one partition of every task, chosen at random. IID and Dirichlet use flwr-datasets.
"""

from __future__ import annotations

import random
from typing import Sequence

from datasets import Dataset

from mops.data import Example
from mops.data.selection import group_by_task
from mops.errors import ConfigError


def skew_sizes(n: int, parts: int, factor: float) -> list[int]:
    """Sizes summing to `n`: one part `factor` x the others (which differ by at most one example)."""
    if parts == 1:
        return [n]
    big = round(n * factor / (parts - 1 + factor))
    base, extra = divmod(n - big, parts - 1)
    return [big] + [base + (i < extra) for i in range(parts - 1)]


def skewed_partitions(examples: Sequence[Example], tasks: Sequence[str], num_clients: int, factor: float,
                      seed: int) -> list[list[Example]]:
    """The paper's non-IID split: per task, sizes from `skew_sizes`, dealt to clients in a random order."""
    rng = random.Random(seed)
    clients: list[list[Example]] = [[] for _ in range(num_clients)]
    by_task = group_by_task(list(examples))
    for task in tasks:
        pool = list(by_task.get(task, []))
        rng.shuffle(pool)
        owners = list(range(num_clients))
        rng.shuffle(owners)
        start = 0
        for owner, size in zip(owners, skew_sizes(len(pool), num_clients, factor)):
            clients[owner].extend(pool[start:start + size])
            start += size
    return clients


def _flwr_partitions(examples: Sequence[Example], partitioner) -> list[list[Example]]:
    table = Dataset.from_dict({"index": list(range(len(examples))), "task": [ex.task for ex in examples]})
    partitioner.dataset = table
    return [[examples[i] for i in partitioner.load_partition(p)["index"]] for p in range(partitioner.num_partitions)]


def partition_examples(examples: Sequence[Example], tasks: Sequence[str], num_clients: int, scheme: str = "skew",
                       seed: int = 0, skew_factor: float = 15.0, alpha: float = 0.5) -> list[list[Example]]:
    """`num_clients` lists of examples (every example in exactly one list)."""
    if num_clients > len(examples):
        raise ConfigError(f"{num_clients} clients but only {len(examples)} training examples")
    if scheme == "skew":
        return skewed_partitions(examples, tasks, num_clients, skew_factor, seed)
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if scheme == "iid":
        return _flwr_partitions(examples, IidPartitioner(num_partitions=num_clients))
    if scheme == "dirichlet":
        return _flwr_partitions(examples, DirichletPartitioner(
            num_partitions=num_clients, partition_by="task", alpha=alpha, min_partition_size=0, seed=seed))
    raise ConfigError(f"unknown partition scheme {scheme!r}: use skew, iid or dirichlet")


def histogram(partitions: Sequence[Sequence[Example]], tasks: Sequence[str]) -> list[list[int]]:
    """(clients x tasks) example counts."""
    index = {t: i for i, t in enumerate(tasks)}
    rows = [[0] * len(tasks) for _ in partitions]
    for row, part in zip(rows, partitions):
        for ex in part:
            row[index[ex.task]] += 1
    return rows
