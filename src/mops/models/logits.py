"""`LogitsFn`: how a model (a plain base, or base + adapter) is called by training and evaluation."""

from __future__ import annotations

from typing import Callable

import torch

# (batch, positions (P,)) -> logits (B, P, V) at those token positions only. The batch is `collate`'s dict on
# the device plus "index": the examples' indices in the scored sequence (for cached activations).
LogitsFn = Callable[[dict, torch.Tensor], torch.Tensor]


def base_logits_fn(model: torch.nn.Module) -> LogitsFn:
    """The plain model as a `LogitsFn` (LM head only at `positions`)."""
    return lambda b, positions: model(
        input_ids=b["input_ids"], attention_mask=b["attention_mask"], logits_to_keep=positions
    ).logits
