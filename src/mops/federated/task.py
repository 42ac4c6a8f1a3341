"""What the server and the clients share: the frozen base, the data and its partitions, the adapter arrays.

A process (the ServerApp, or a simulation actor / SuperNode running ClientApps) loads the base model and
the data once and keeps them for every later message of the same settings (`shared_setup`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from mops.compression.config import compression_from
from mops.data import DataSplits, Encoded, Tokenizer, load_splits
from mops.federated.config import FederatedConfig
from mops.federated.partition import partition_examples
from mops.models import BaseModel, load_base_model
from mops.training.config import TrainConfig
from mops.tuners.mops.config import MoPConfig
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


def _setup_key(cfg: FederatedConfig) -> tuple:
    """The settings that decide the base model, the data and the partitions."""
    return (cfg.model, cfg.compress, cfg.data, cfg.tasks, cfg.total, cfg.max_length, cfg.num_clients, cfg.partition,
            cfg.skew_factor, cfg.dirichlet_alpha, cfg.seed)


@lru_cache(maxsize=2)
def _shared(key: tuple) -> SharedSetup:
    model, compress, data, tasks, total, max_length, clients, scheme, factor, alpha, seed = key
    base = load_base_model(model, compression=compression_from(compress or None, data, seed))
    splits = load_splits(data, tasks or None, total, seed=seed)
    tokenizer = Tokenizer(base.tokenizer, splits.tasks, max_length)
    partitions = partition_examples(splits.train, splits.tasks, clients, scheme, seed, factor, alpha)
    return SharedSetup(base, splits, tokenizer, partitions)


def shared_setup(cfg: FederatedConfig) -> SharedSetup:
    return _shared(_setup_key(cfg))


def mop_config(cfg: FederatedConfig, tasks: list[str]) -> MoPConfig:
    return MoPConfig(num_experts=cfg.num_experts, prompts_per_expert=cfg.prompts_per_expert or None,
                     routing=cfg.routing,
                     injection_layer=None if cfg.injection_layer < 0 else cfg.injection_layer,
                     use_gate=cfg.use_gate, tasks=tasks, init_seed=cfg.seed)


def train_config(cfg: FederatedConfig, steps: int, seed: int) -> TrainConfig:
    """Local training settings (also the server's recovery and gate pretraining)."""
    return TrainConfig(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, gate_lr=cfg.gate_lr, seed=seed,
                       recovery_steps=cfg.recovery_steps, recovery_lr=cfg.lr,
                       gate_pretrain_steps=cfg.gate_pretrain_steps, gate_pretrain_examples=cfg.gate_pretrain_examples,
                       eval_limit_per_task=cfg.eval_limit_per_task or None, checkpoint_every=0)


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
