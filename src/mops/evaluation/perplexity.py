"""Response-token perplexity, per task and overall, exact under batching."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from mops.data.batching import collate, length_sorted_batches
from mops.data.tokenization import IGNORE_INDEX, Encoded
from mops.models.logits import LogitsFn
from mops.progress import progress_bar



def loss_positions(labels: torch.Tensor) -> torch.Tensor:
    """(P,) positions j whose next token j+1 carries a label in some row: the only logits a loss needs.

    Skipping the LM head elsewhere (instructions, padding) saves most of its cost: over a 49k vocabulary it
    costs as much as several decoder layers.
    """
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)


def token_nll(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token NLL summed per example over labelled positions, in fp32, without a host sync.

    logits: (B, T, V), or (B, P, V) at `positions` (see `loss_positions`); labels: (B, T) with IGNORE_INDEX
    where there is no loss. Returns (nll_sum (B,) float64, token_count (B,)); mean NLL = nll_sum.sum() /
    token_count.sum(), exactly what `model(input_ids, labels=labels).loss` computes for the same batch.
    Unlabelled positions contribute an exact 0 (``ignore_index``), so no data-dependent indexing is needed.
    """
    if positions is None:
        logits, target = logits[:, :-1], labels[:, 1:]
    else:
        target = labels[:, positions + 1]
    nll = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX,
                          reduction="none").view(target.shape)
    return nll.double().sum(dim=1), (target != IGNORE_INDEX).sum(dim=1)


@dataclass
class TaskScore:
    tokens: int = 0
    nll: float = 0.0  # summed over tokens
    examples: int = 0

    @property
    def mean_nll(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def ppl(self) -> float:
        return math.exp(self.mean_nll) if self.tokens else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {"tokens": self.tokens, "examples": self.examples, "nll": self.mean_nll, "ppl": self.ppl}


@dataclass
class PerplexityReport:
    """Per task and overall (token-weighted) response-token perplexity."""

    per_task: dict[str, TaskScore] = field(default_factory=dict)

    @property
    def overall(self) -> TaskScore:
        return TaskScore(sum(s.tokens for s in self.per_task.values()), sum(s.nll for s in self.per_task.values()),
                         sum(s.examples for s in self.per_task.values()))

    def to_dict(self) -> dict:
        return {
            "per_task": {t: s.to_dict() for t, s in self.per_task.items()},
            "overall": self.overall.to_dict(),
        }


def device_batch(batch: Sequence[Encoded], indices: Sequence[int], pad_id: int, device) -> dict:
    """`collate` on `device`, plus the examples' ``index`` list and ``positions`` (`loss_positions`, found on
    the host before the copy, so no step waits on the device for them). Host tensors are pinned for CUDA, so
    the copies run asynchronously."""
    host = collate(batch, pad_id)
    host["positions"] = loss_positions(host["labels"])
    cuda = torch.device(device).type == "cuda"
    b = {k: (v.pin_memory() if cuda else v).to(device, non_blocking=cuda) for k, v in host.items()}
    b["index"] = list(indices)
    return b


@torch.no_grad()
def evaluate_perplexity(
    logits_fn: LogitsFn,
    encoded: Sequence[Encoded],
    tasks: Sequence[str],
    pad_id: int,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> PerplexityReport:
    """Score `encoded` examples with `logits_fn`; batches are length-sorted, right-padded."""
    report = PerplexityReport({t: TaskScore() for t in tasks})
    batches = list(length_sorted_batches([len(e.input_ids) for e in encoded], batch_size))
    with progress_bar(len(batches), "eval", enabled=progress) as advance:
        for indices in batches:
            b = device_batch([encoded[i] for i in indices], indices, pad_id, device)
            sums, counts = token_nll(logits_fn(b, b["positions"]), b["labels"], b["positions"])
            for task_id, s, c in zip(b["task_ids"].tolist(), sums.tolist(), counts.tolist()):
                score = report.per_task[tasks[task_id]]
                score.nll += s
                score.tokens += c
                score.examples += 1
            advance()
    return report
