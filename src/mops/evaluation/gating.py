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
            mask = b["attention_mask"].to(device)
            gate_mask = model.gate_token_mask(mask, b["labels"].to(device))
            feats.append(model.gate_inputs(b["input_ids"].to(device), mask, gate_mask).float())
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


def routing_stats(matrix: Sequence[Sequence[float]], used_above: float = 0.02) -> dict[str, float]:
    """How specialised a (tasks x experts) mean-gate matrix is.

    experts_used: experts whose mean weight over tasks exceeds `used_above`; task_expert_mi: mutual information
    (bits) between task (uniform) and expert, I = H(mean row) - mean H(row): 0 when every task is routed alike,
    log2(min(T, E)) when each task has its own expert; top_weight: mean over tasks of the largest weight.
    """
    m = torch.tensor(matrix, dtype=torch.float64).clamp_min(1e-12)

    def entropy(p: torch.Tensor) -> torch.Tensor:
        return -(p * p.log2()).sum(-1)

    mean = m.mean(0)
    return {"experts_used": int((mean > used_above).sum()),
            "task_expert_mi": float(entropy(mean) - entropy(m).mean()),
            "top_weight": float(m.max(-1).values.mean())}
