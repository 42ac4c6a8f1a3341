"""What the server and the clients share: the frozen base, the data and its partitions, the adapter arrays.

A process (the ServerApp, or a simulation actor / SuperNode running ClientApps) loads the base model and
the data once and keeps them for every later message of the same settings (`shared_setup`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import torch
from flwr.app import ArrayRecord

from mops.compression.config import compression_from
from mops.compression.load import load_model
from mops.data import DataSplits, Encoded, Tokenizer, load_splits
from mops.federated.config import FederatedRun
from mops.federated.partition import partition_examples
from mops.models import BaseModel
from mops.tuners.mops.model import MoPModel

FROZEN_KEY = "input_prompts"
PROMPTS_KEY = "prompts"  # prompt tuning's message: the num_slots prompts it trains


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


def trainable_state(model: MoPModel, gate_travels: bool = True) -> dict[str, torch.Tensor]:
    """What clients train and the server averages (a round's message): MoPs: the expert prompts (E*p, d) and
    the gate (unless the method keeps it as pretrained or on each client: `Method.gate_travels`); prompt tuning
    (no gate): with merge routing, the p prompts it trains (the experts' mean, (p, d): all the model uses of them
    without a gate), with attention routing all E*p slots."""
    cfg = model.config
    state = model.adapter_state()
    state.pop(FROZEN_KEY)
    if not cfg.use_gate or not gate_travels:
        state = {k: v for k, v in state.items() if not k.startswith("gate.")}
        if cfg.routing == "merge" and not cfg.use_gate:
            experts = state.pop("expert_prompts")
            state[PROMPTS_KEY] = experts.view(cfg.num_experts, cfg.prompts_per_expert, -1).mean(0)
    elif not cfg.learn_gate_strength:
        state.pop("gate.strength")  # a fixed setting, not a trained array
    return state


def gate_state(model: MoPModel) -> dict[str, torch.Tensor]:
    """The gate's arrays (MLP and strength) of `model`'s adapter state."""
    return {k: v for k, v in model.adapter_state().items() if k.startswith("gate.")}


def frozen_state(model: MoPModel, gate_travels: bool = True) -> dict[str, torch.Tensor]:
    """What a client needs once, not every round: P^1, and the pretrained gate of a gated method whose gate
    does not travel (`mops_frozen_gate` keeps it, `mops_personal_gate` starts each client's own gate from it)."""
    gate = gate_state(model) if model.config.use_gate and not gate_travels else {}
    return {FROZEN_KEY: model.adapter_state()[FROZEN_KEY], **gate}


def load_state(model: MoPModel, trainable: dict[str, torch.Tensor], frozen: dict[str, torch.Tensor]) -> None:
    """Put the global arrays and the `frozen_state` into `model`. Prompt tuning's prompts go into every expert:
    their mean, the merged slots, is then exactly those prompts, and Adam moves every expert by the same step, so
    training from here equals training the full set."""
    state = model.adapter_state()
    state.update(frozen)
    state.update(trainable)
    if PROMPTS_KEY in state:
        state["expert_prompts"] = state.pop(PROMPTS_KEY).repeat(model.config.num_experts, 1)
    model.load_adapter_state({k: v.to(model.base.model.device) for k, v in state.items()})


def to_wire(state: dict[str, torch.Tensor], dtype: str) -> ArrayRecord:
    """The trained arrays as a message carries them: in `dtype` (float32 or float16)."""
    return ArrayRecord({k: v.detach().to("cpu", getattr(torch, dtype)) for k, v in state.items()})


def from_wire(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """A message's arrays as float32 tensors (what training and averaging use)."""
    return {k: v.float() for k, v in record.to_torch_state_dict().items()}


def payload(key: str) -> str:
    """The payload an array of a message belongs to: experts, prompts, gate or input_prompts (P^1)."""
    return {"expert_prompts": "experts", PROMPTS_KEY: "prompts", FROZEN_KEY: "input_prompts"}.get(
        key, "gate" if key.startswith("gate.") else key)


def payload_bytes(record: ArrayRecord) -> dict[str, int]:
    """Bytes of `record` as Flower serialises them, per payload (they sum to `record.count_bytes()`)."""
    sizes: dict[str, int] = {}
    for key in record:
        sizes[payload(key)] = sizes.get(payload(key), 0) + ArrayRecord({key: record[key]}).count_bytes()
    return sizes


def digest(state: dict[str, torch.Tensor]) -> str:
    """A short content digest of named tensors (how clients recognise the frozen state they hold)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


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
