"""The gating network: a shallow MLP on the mean hidden state at the injection layer."""

from __future__ import annotations

import math

import torch
from torch import nn


class Gate(nn.Module):
    """g = softmax(W2 relu(W1 avg_emb)), one score per expert (paper eq. "The gating function").

    Kept in fp32 whatever the base model's dtype: it is tiny and its softmax is sensitive.
    """

    def __init__(self, hidden_size: int, gate_hidden_size: int, num_experts: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, gate_hidden_size)
        self.fc2 = nn.Linear(gate_hidden_size, num_experts)
        self.num_experts = num_experts

    def logits(self, avg_emb: torch.Tensor) -> torch.Tensor:
        """avg_emb: (B, d) -> (B, E) unnormalised scores."""
        return self.fc2(torch.relu(self.fc1(avg_emb.float())))

    def forward(self, avg_emb: torch.Tensor) -> torch.Tensor:
        """avg_emb: (B, d) -> expert weights (B, E), rows sum to 1."""
        return torch.softmax(self.logits(avg_emb), dim=-1)


def log_weights(weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Additive attention bias per expert: log g (softmax) or log(E g) (scaled: uniform g -> 0 bias)."""
    bias = torch.log(weights.clamp_min(1e-30))
    return bias + math.log(weights.shape[-1]) if mode == "scaled" else bias
