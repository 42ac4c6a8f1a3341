"""The trainable state of a run's model: the MoPs adapter's own tensors, plus the weights of a peft adapter
attached inside the base while it trains (``lm.<name>``), so checkpoints and stored stages keep both."""

from __future__ import annotations

import torch

from mops.errors import ModelLoadError
from mops.tuners.mops.model import MoPModel

PEFT_PREFIX = "lm."


def trainable_state(model: MoPModel) -> dict[str, torch.Tensor]:
    """`model.adapter_state()` plus every trainable weight inside the base (a LoRA / IA3 adapter): copies, so a
    snapshot taken before a method trains still holds the state it was taken in."""
    inside = {f"{PEFT_PREFIX}{k}": v.detach().to("cpu", torch.float32, copy=True).contiguous()
              for k, v in model.lm.named_parameters() if v.requires_grad}
    return model.adapter_state() | inside


@torch.no_grad()
def load_peft_weights(model: MoPModel, state: dict[str, torch.Tensor]) -> None:
    """The ``lm.<name>`` entries of `state` into the modules of the adapter attached to the base."""
    inside = {k.removeprefix(PEFT_PREFIX): v for k, v in state.items() if k.startswith(PEFT_PREFIX)}
    params = dict(model.lm.named_parameters())
    missing = sorted(set(inside) - set(params))
    if missing:
        raise ModelLoadError(f"adapter weights for modules this model lacks: {missing[:3]}")
    for k, v in inside.items():
        params[k].copy_(v)


def load_trainable_state(model: MoPModel, state: dict[str, torch.Tensor]) -> None:
    """Inverse of `trainable_state`."""
    load_peft_weights(model, state)
    model.load_adapter_state({k: v for k, v in state.items() if not k.startswith(PEFT_PREFIX)})
