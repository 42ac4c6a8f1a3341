"""Checkpoints without pickle: adapter and optimizer tensors in safetensors, the rest in JSON.

Why by hand: `torch.save` / accelerate's `save_state` pickle the optimizer; we flatten its state dict
into named tensors instead. Writes go to a temporary folder renamed into place, so a crash never leaves a
half-written checkpoint; the last `keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

ADAPTER, OPTIMIZER, STATE = "adapter.safetensors", "optimizer.safetensors", "trainer_state.json"


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    directory: Path, step: int, adapter: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
    extra: dict, keep: int = 2,
) -> Path:
    """Write `directory/step-NNNNNN` atomically and prune older ones."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"step-{step:06d}"
    tmp = directory / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors, meta = _flatten_optimizer(optimizer.state_dict())
    save_file(adapter, str(tmp / ADAPTER))
    save_file(tensors, str(tmp / OPTIMIZER))
    rng = {"torch_rng": torch.get_rng_state().tolist()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # every GPU's generator (dropout, noise)
        rng["cuda_rng"] = [state.tolist() for state in torch.cuda.get_rng_state_all()]
    (tmp / STATE).write_text(json.dumps({"step": step, "optimizer": meta, **rng, **extra}))
    shutil.rmtree(target, ignore_errors=True)
    os.rename(tmp, target)
    for old in sorted(directory.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(directory: Path) -> Path | None:
    found = sorted(p for p in directory.glob("step-*") if (p / STATE).is_file()) if directory.is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: Path, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Restore the optimizer and the RNGs (CPU, and each GPU's where saved and present); returns (adapter
    tensors, trainer state)."""
    state = json.loads((path / STATE).read_text())
    adapter, moments = load_file(str(path / ADAPTER)), load_file(str(path / OPTIMIZER))  # read all before changing
    optimizer.load_state_dict(_unflatten_optimizer(moments, state["optimizer"]))
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    cuda = state.get("cuda_rng", [])
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in cuda])
    return adapter, state


def resume_checkpoint(
    directory: Path, optimizer: torch.optim.Optimizer, warn: Callable[[str], None]
) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The newest checkpoint that loads; a damaged one (truncated file, bad JSON, wrong shapes) is renamed
    `damaged-step-N`, reported through `warn`, and the one before it is tried. None: start from step 0."""
    while (path := latest_checkpoint(directory)) is not None:
        try:
            return load_checkpoint(path, optimizer)
        except Exception as err:  # safetensors, JSON and optimizer-shape errors all mean "unusable"
            target = path.with_name(f"damaged-{path.name}")
            shutil.rmtree(target, ignore_errors=True)
            os.rename(path, target)
            previous = latest_checkpoint(directory)
            warn(f"checkpoint {path} is damaged ({type(err).__name__}); kept as {target.name}, resuming from "
                 f"{previous or 'the start of the stage'}")
    return None
