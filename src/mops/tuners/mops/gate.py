"""The gating network: a shallow MLP on the mean hidden state at the injection layer."""

from __future__ import annotations

import math

import torch
from torch import nn


class Gate(nn.Module):
    """g = softmax(W2 relu(W1 avg_emb)), one score per expert (paper eq. "The gating function").

    Kept in fp32 whatever the base model's dtype: it is tiny and its softmax is sensitive. `strength` (a scalar,
    optionally trained) multiplies the attention bias the weights become (`attention_bias`); `noise` is the std
    of Gaussian noise added to the scores in training mode (router perturbation, as in SMoP).
    """

    def __init__(
        self, hidden_size: int, gate_hidden_size: int, num_experts: int, strength: float = 1.0,
        learn_strength: bool = False, noise: float = 0.0,
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, gate_hidden_size)
        self.fc2 = nn.Linear(gate_hidden_size, num_experts)
        self.strength = nn.Parameter(torch.tensor(float(strength)), requires_grad=learn_strength)
        self.learn_strength = learn_strength
        self.num_experts = num_experts
        self.noise = noise

    def trainable_(self, flag: bool) -> "Gate":
        """Train the MLP (and the strength, when it is learned) or freeze everything."""
        self.requires_grad_(flag)
        self.strength.requires_grad_(flag and self.learn_strength)
        return self

    def logits(self, avg_emb: torch.Tensor) -> torch.Tensor:
        """avg_emb: (B, d) -> (B, E) unnormalised scores (plus noise in training mode)."""
        scores = self.fc2(torch.relu(self.fc1(avg_emb.float())))
        if self.training and self.noise > 0:
            scores = scores + self.noise * torch.randn_like(scores)
        return scores

    def forward(self, avg_emb: torch.Tensor) -> torch.Tensor:
        """avg_emb: (B, d) -> expert weights (B, E), rows sum to 1."""
        return torch.softmax(self.logits(avg_emb), dim=-1)

    def attention_bias(self, weights: torch.Tensor, mode: str) -> torch.Tensor:
        """(B, E) weights -> (B, E) additive attention bias per expert: strength * `log_weights`."""
        return self.strength * log_weights(weights, mode)


def log_weights(weights: torch.Tensor, mode: str) -> torch.Tensor:
    """Additive attention bias per expert: log g (softmax) or log(E g) (scaled: uniform g -> 0 bias)."""
    bias = torch.log(weights.clamp_min(1e-30))
    return bias + math.log(weights.shape[-1]) if mode == "scaled" else bias


def balance_loss(weights: torch.Tensor) -> torch.Tensor:
    """(B, E) weights -> KL(mean_b g || uniform) = log E - H(mean_b g): 0 when the batch uses every expert equally.

    Per-example routing may stay sharp; only the batch's average routing is pushed towards uniform (the load
    balancing of sparse mixture-of-experts routers, in its soft form).
    """
    mean = weights.mean(0).clamp_min(1e-30)
    return math.log(weights.shape[-1]) + (mean * mean.log()).sum()
