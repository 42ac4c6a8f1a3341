"""What the server and the clients share: the frozen base, the data and its partitions, the adapter arrays.

A process (the ServerApp, or a simulation actor / SuperNode running ClientApps) loads the base model and
the data once and keeps them for every later message of the same settings (`shared_setup`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import torch

from mops.compression.config import compression_from
from mops.compression.load import load_model
from mops.data import DataSplits, Encoded, Tokenizer, load_splits
from mops.federated.config import FederatedRun
from mops.federated.partition import partition_examples
from mops.models import BaseModel
from mops.tuners.mops.model import MoPModel

FROZEN_KEY = "input_prompts"


@dataclass
class SharedSetup:
    """Base model, data splits, tokenizer and the client partitions for one configuration."""

    base: BaseModel
    splits: DataSplits
    tokenizer: Tokenizer
    partitions: list = field(default_factory=list)

    def encoded_partition(self, pid: int) -> list[Encoded]:
        return self.tokenizer.encode_all(self.partitions[pid])


def _setup_key(cfg: FederatedRun) -> str:
    """The settings that decide the base model, the data and the partitions (as JSON: hashable and exact)."""
    fed = cfg.federation
    return json.dumps([asdict(cfg.model), asdict(cfg.data), fed.num_clients, fed.partition, fed.skew_factor,
                       fed.dirichlet_alpha, cfg.seed])


@lru_cache(maxsize=2)
def _shared(key: str) -> SharedSetup:
    model, data, clients, scheme, factor, alpha, seed = json.loads(key)
    base = load_model(model["model"], compression_from(model["compress"], data["data"], seed), dtype=model["dtype"],
                      device=model["device"])
    splits = load_splits(data["data"], data["tasks"], data["total"], seed=seed, skip_invalid=data["skip_invalid"])
    tokenizer = Tokenizer(base.tokenizer, splits.tasks, data["max_length"], data["template"])
    partitions = partition_examples(splits.train, splits.tasks, clients, scheme, seed, factor, alpha)
    return SharedSetup(base, splits, tokenizer, partitions)


def shared_setup(cfg: FederatedRun) -> SharedSetup:
    return _shared(_setup_key(cfg))


def trainable_state(model: MoPModel) -> dict[str, torch.Tensor]:
    """What clients train and the server averages: the expert prompts, plus the gate when it is on."""
    state = model.adapter_state()
    state.pop(FROZEN_KEY)
    if not model.config.use_gate:
        state = {k: v for k, v in state.items() if not k.startswith("gate.")}
    elif not model.config.learn_gate_strength:
        state.pop("gate.strength")  # a fixed setting, not a trained array
    return state


def load_state(model: MoPModel, trainable: dict[str, torch.Tensor], frozen: torch.Tensor) -> None:
    """Put the global arrays into `model` (the gate keeps its values when the arrays carry none)."""
    state = model.adapter_state()
    state.update(trainable)
    state[FROZEN_KEY] = frozen
    model.load_adapter_state({k: v.to(model.base.model.device) for k, v in state.items()})


def problems_with(update: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> str | None:
    """Why a client update cannot be averaged (missing/extra keys, wrong shapes, NaN/Inf), or None."""
    if set(update) != set(reference):
        return f"keys {sorted(set(update) ^ set(reference))} differ from the global adapter's"
    for key, ref in reference.items():
        if tuple(update[key].shape) != tuple(ref.shape):
            return f"{key} has shape {tuple(update[key].shape)}, expected {tuple(ref.shape)}"
        if not bool(torch.isfinite(update[key]).all()):
            return f"{key} contains NaN or Inf"
    return None


def mean_loss(losses: list[float]) -> float:
    return sum(losses) / len(losses) if losses else math.nan
