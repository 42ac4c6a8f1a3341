"""Padding encoded examples into batches."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch

from mops.data.tokenization import IGNORE_INDEX, Encoded


def collate(batch: Sequence[Encoded], pad_id: int, left_pad: bool = False) -> dict[str, torch.Tensor]:
    """-> input_ids, attention_mask, labels: (B, T) with T the longest in the batch; task_ids: (B,).

    Right padding for training and scoring; left padding for generation.
    """
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        cols = slice(width - n, width) if left_pad else slice(0, n)
        ids[row, cols] = torch.tensor(e.input_ids)
        labels[row, cols] = torch.tensor(e.labels)
        mask[row, cols] = 1
    task_ids = torch.tensor([e.task_id for e in batch], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "task_ids": task_ids}


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Index batches of similar length (less padding), for evaluation and caching where order does not matter."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
