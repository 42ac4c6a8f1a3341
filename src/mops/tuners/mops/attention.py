"""The gate acts on attention, where a pre-norm block cannot normalise it away.

Why by hand: transformers has no hook for a per-layer, per-key attention bias. We register attention
functions ``mops_sdpa`` / ``mops_eager`` with transformers' `AttentionInterface`; each one edits the attention
mask of its layer and then calls the model's own sdpa/eager implementation, so every architecture that uses
the interface (Llama, Qwen2, Gemma 3, ...) works unchanged.

In every layer the K prompt slots (key positions 0..K-1) stay visible to every real token (also in
sliding-window layers). From the injection layer on, every query's logit towards the slots of expert e gets
+log(w_e) (`gate.log_weights`): the same as multiplying those attention weights by w_e and renormalising.
Below the injection layer the slots are hidden from the tokens when there are no input prompts.
A layer with nothing to add (merge routing, or attention routing without a gate, with input prompts, and no
sliding window that could hide the slots) gets the model's own mask untouched: no dense float mask is built,
and SDPA keeps its fused kernels where the model's mask allows them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PREFIX = "mops_"


@dataclass
class SlotState:
    """Per-forward state shared by the injection hook and the attention functions of one MoP model."""

    num_slots: int
    injection_layer: int
    hide_slots_below: bool  # no input prompts: tokens do not see the slots below the injection layer
    slot_bias: torch.Tensor | None = None  # (B, K) log weights for layers >= injection_layer

    def layer_bias(self, layer_idx: int) -> tuple[torch.Tensor | None, bool]:
        """(bias over the K slot keys or None, hide the slots) for one layer."""
        if layer_idx >= self.injection_layer:
            return self.slot_bias, False
        return None, self.hide_slots_below


def _float_mask(mask: torch.Tensor | None, q_len: int, k_len: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The layer's mask as an additive float mask (B|1, 1, q, k); a causal one when the model passed None."""
    neg = torch.finfo(dtype).min
    if mask is None:
        q_pos = torch.arange(k_len - q_len, k_len, device=device).unsqueeze(1)
        allowed = torch.arange(k_len, device=device).unsqueeze(0) <= q_pos
        return torch.zeros(1, 1, q_len, k_len, dtype=dtype, device=device).masked_fill(~allowed, neg)
    mask = mask[..., :k_len]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, neg)
    return mask.to(dtype).clone()


def slot_mask(
    mask: torch.Tensor | None, state: SlotState, layer_idx: int, q_len: int, k_len: int, dtype, device
) -> torch.Tensor | None:
    """Edit one layer's attention mask: slots visible (or hidden) to real tokens, plus the gate bias."""
    bias, hide = state.layer_bias(layer_idx)
    k = state.num_slots
    out = _float_mask(mask, q_len, k_len, dtype, device)
    token_queries = torch.arange(k_len - q_len, k_len, device=device) >= k  # absolute position >= K
    slot_cols = out[..., :k]
    fill = torch.finfo(dtype).min if hide else 0.0
    slot_cols = torch.where(token_queries.view(1, 1, -1, 1), torch.full_like(slot_cols, fill), slot_cols)
    if bias is not None:
        slot_cols = slot_cols + bias.to(dtype)[:, None, None, :]
    if slot_cols.shape[0] != out.shape[0]:
        out = out.expand(slot_cols.shape[0], -1, -1, -1)
    return torch.cat([slot_cols, out[..., k:]], dim=-1)


def needs_edit(state: SlotState, module) -> bool:
    """Whether `module`'s mask must change: a gate bias, slots to hide, or a sliding window (which could hide
    the slots from far tokens). Otherwise the slots, at positions 0..K-1, are already visible under the causal
    mask and the edit would be the identity."""
    bias, hide = state.layer_bias(module.layer_idx)
    return bias is not None or hide or getattr(module, "sliding_window", None) is not None


def _wrap(base_name: str) -> Callable:
    def attention(module, query, key, value, attention_mask, **kwargs):
        state: SlotState | None = getattr(module, "_mops_state", None)
        if state is not None and needs_edit(state, module):
            attention_mask = slot_mask(
                attention_mask, state, module.layer_idx, query.shape[-2], key.shape[-2], query.dtype, query.device
            )
        if base_name == "sdpa":
            base = ALL_ATTENTION_FUNCTIONS["sdpa"]
        else:  # each model file defines its own eager attention (softcapping, sinks, ...)
            base = sys.modules[type(module).__module__].eager_attention_forward
        return base(module, query, key, value, attention_mask, **kwargs)

    return attention


def register() -> None:
    """Register ``mops_sdpa`` and ``mops_eager`` (idempotent)."""
    for name, mask_fn in (("sdpa", sdpa_mask), ("eager", eager_mask)):
        AttentionInterface.register(PREFIX + name, _wrap(name))
        AttentionMaskInterface.register(PREFIX + name, mask_fn)


def gated_name(implementation: str) -> str:
    """The mops attention implementation that wraps `implementation` (sdpa or eager)."""
    base = implementation.removeprefix(PREFIX)
    if base not in ("sdpa", "eager"):
        from mops.errors import ConfigError

        raise ConfigError(f"MoPs supports the sdpa and eager attention implementations, not '{implementation}'")
    register()
    return PREFIX + base
