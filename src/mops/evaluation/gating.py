"""Average gate weight per (task, expert): the paper's gating heatmaps."""

from __future__ import annotations

from typing import Sequence

import torch

from mops.data.batching import collate
from mops.data.tokenization import Encoded
from mops.progress import progress_bar
from mops.tuners.mops.model import MoPModel


@torch.no_grad()
def gate_features(
    model: MoPModel, encoded: Sequence[Encoded], batch_size: int, pad_id: int, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d) mean hidden states at the injection layer and (N,) task ids, in the order of `encoded`."""
    feats, tasks = [], []
    device = model.expert_prompts.device
    chunks = [encoded[i : i + batch_size] for i in range(0, len(encoded), batch_size)]
    with progress_bar(len(chunks), "gate features", enabled=progress) as advance:
        for chunk in chunks:
            b = collate(chunk, pad_id)
            feats.append(model.gate_inputs(b["input_ids"].to(device), b["attention_mask"].to(device)).float())
            tasks.append(b["task_ids"])
            advance()
    return torch.cat(feats), torch.cat(tasks).to(device)


def weights_by_task(weights: torch.Tensor, task_ids: torch.Tensor, num_tasks: int) -> list[list[float]]:
    """(tasks x experts) mean of per-example gate weights (N, E) grouped by task id (N,); rows sum to 1."""
    weights, task_ids = weights.float().cpu(), task_ids.cpu()
    rows = []
    for task in range(num_tasks):
        sel = weights[task_ids == task]
        rows.append(sel.mean(0).tolist() if len(sel) else [float("nan")] * weights.shape[1])
    return rows


@torch.no_grad()
def gate_matrix(model: MoPModel, encoded: Sequence[Encoded], num_tasks: int, batch_size: int, pad_id: int) -> list[list[float]]:
    """(tasks x experts) mean gate weights over `encoded`, running the layers below the injection layer."""
    feats, task_ids = gate_features(model, encoded, batch_size, pad_id)
    return weights_by_task(model.gate(feats), task_ids, num_tasks)
