"""Settings of a federated run: `FederationConfig` holds what only federation has (clients, rounds, partition,
timeouts); `FederatedRun` nests it with the same ModelConfig, DataConfig, MoPConfig and TrainConfig a centralised
run uses, so both train alike by construction.

The Flower run config is the flattened nested config (`flwr.common.config.flatten_dict`: keys such as
``train.lr``, ``federation.num_clients``). Flower configs hold scalars only, so None travels as ``""`` and
restores from each field's type. The server reads it from `context.run_config` and sends it to the clients
inside every training message, so a client needs no configuration of its own besides its partition id.
"""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from mops.data.config import DataConfig
from mops.errors import ConfigError
from mops.models.config import ModelConfig
from mops.settings import unwrap_optional
from mops.training.config import TrainConfig
from mops.tuners.mops.config import MoPConfig
from mops.tuners.registry import FEDERATED, METHODS

PARTITIONS = ("skew", "iid", "dirichlet")
FAULTS = ("raise", "hang", "nan", "shape")
TRANSPORT_DTYPES = ("float32", "float16")  # numpy (Flower's arrays) has no bfloat16
SERVER_OPTIMIZERS = ("fedavg", "fedavgm", "fedadam", "fedyogi")  # Flower's strategies of these names
AGGREGATIONS = ("fedavg", "expertwise")
# TrainConfig fields a federated run does not read: its steps are `local_steps` per round, it evaluates and
# checkpoints once per round, and its methods attach no peft adapter.
NOT_FEDERATED = frozenset({"steps", "eval_every", "eval_at", "checkpoint_every", "lora_lr", "ia3_lr", "lora_r",
                           "lora_alpha", "lora_dropout", "peft_targets", "match_parameters"})
# `mops federate` at CPU size (the paper's setup is 100 clients, 10 per round, 250 local steps at batch 1).
# Stages and rates as `mops demo` runs them.
CPU_PRESET = {"data": {"max_length": 128},
              "train": {"batch_size": 4, "recovery_steps": 5, "recovery_lr": 1e-2, "gate_pretrain_steps": 200,
                        "gate_pretrain_examples": 140, "eval_limit_per_task": 10}}


def parse_faults(text: str) -> dict[int, str]:
    """``"1:raise,3:nan"`` -> {1: "raise", 3: "nan"}: partition id -> injected fault (for fault tests)."""
    faults: dict[int, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        pid, _, kind = part.partition(":")
        if not pid.isdigit() or kind not in FAULTS:
            raise ConfigError(f"inject_faults: {part!r} is not PARTITION:KIND with KIND one of {', '.join(FAULTS)}")
        faults[int(pid)] = kind
    return faults


@dataclass
class FederationConfig:
    """What only a federated run has. Defaults: a CPU-sized federation (paper: 100 clients, 10 per round, 250
    local steps)."""

    num_clients: int = field(default=10, metadata={"help": "Clients (= partitions; paper: 100).", "flags": ("--clients",)})
    clients_per_round: int = field(default=2, metadata={"help": "Clients sampled per round (paper: 10)."})
    rounds: int = field(default=3, metadata={"help": "Federated rounds."})
    local_steps: int = field(default=5, metadata={"help": "Optimiser steps per client per round (paper: 250)."})
    partition: str = field(default="skew", metadata={"help": "skew (paper, App. A), iid or dirichlet."})
    skew_factor: float = field(default=15.0, metadata={
        "help": "skew: the large partition of a task is this many times the others."})
    dirichlet_alpha: float = field(default=0.5, metadata={
        "help": "dirichlet: concentration (smaller = more skewed).", "flags": ("--alpha",)})
    transport_dtype: str = field(default="float32", metadata={
        "help": "Dtype of the trained arrays in messages: float32, or float16 (half the bytes; clients train and "
                "the server averages in float32)."})
    aggregation: str = field(default="fedavg", metadata={
        "help": "How expert prompts are averaged: fedavg (by client example counts) or expertwise (client i's "
                "update to expert e weighted by its examples x the share of its gate weight that went to e)."})
    proximal_mu: float = field(default=0.0, metadata={
        "help": "FedProx: clients add mu/2 ||w - w_global||^2 over the arrays they train (0: plain local training)."})
    server_optimizer: str = field(default="fedavg", metadata={
        "help": "How the server applies the averaged update: fedavg, fedavgm (momentum), fedadam or fedyogi "
                "(Flower's strategies)."})
    server_lr: float | None = field(default=None, metadata={
        "help": "Server learning rate of fedavgm / fedadam / fedyogi (unset: Flower's default, 1.0 for fedavgm, "
                "0.1 for fedadam / fedyogi)."})
    server_momentum: float = field(default=0.0, metadata={"help": "fedavgm: server momentum, in [0, 1)."})
    round_timeout: float = field(default=600.0, metadata={"help": "Seconds to wait for clients each round."})
    inject_faults: str = field(default="", metadata={
        "help": "Fault tests: PARTITION:KIND,... with KIND raise, hang, nan or shape."})

    def __post_init__(self) -> None:
        if self.partition not in PARTITIONS:
            raise ConfigError(f"partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}")
        for name in ("num_clients", "clients_per_round", "rounds", "local_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"FederationConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.clients_per_round > self.num_clients:
            raise ConfigError(f"clients_per_round ({self.clients_per_round}) > num_clients ({self.num_clients})")
        if self.transport_dtype not in TRANSPORT_DTYPES:
            raise ConfigError(f"transport_dtype must be one of {', '.join(TRANSPORT_DTYPES)}, got {self.transport_dtype!r}")
        if self.proximal_mu < 0:
            raise ConfigError(f"proximal_mu must be >= 0, got {self.proximal_mu}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {self.aggregation!r}")
        if self.aggregation == "expertwise" and self.server_optimizer != "fedavg":
            raise ConfigError("aggregation expertwise averages the experts itself: use it with server_optimizer fedavg")
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise ConfigError(f"server_optimizer must be one of {', '.join(SERVER_OPTIMIZERS)}, got {self.server_optimizer!r}")
        if self.server_lr is not None and self.server_lr <= 0:
            raise ConfigError(f"server_lr must be > 0, got {self.server_lr}")
        if not 0 <= self.server_momentum < 1:
            raise ConfigError(f"server_momentum must be in [0, 1), got {self.server_momentum}")
        if self.server_momentum and self.server_optimizer != "fedavgm":
            raise ConfigError(f"server_momentum is a setting of fedavgm, not of {self.server_optimizer}")
        if self.server_lr is not None and self.server_optimizer == "fedavg":
            raise ConfigError("server_lr is a setting of fedavgm, fedadam and fedyogi (fedavg applies the average)")
        if self.skew_factor < 1:
            raise ConfigError(f"skew_factor must be >= 1, got {self.skew_factor}")
        if self.dirichlet_alpha <= 0:
            raise ConfigError(f"dirichlet_alpha must be > 0, got {self.dirichlet_alpha}")
        parse_faults(self.inject_faults)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "mop": MoPConfig, "train": TrainConfig,
            "federation": FederationConfig}


@dataclass
class FederatedRun:
    """One federated training (one method, one seed) and where it goes."""

    output: str
    method: str
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mop: MoPConfig = field(default_factory=MoPConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)

    def __post_init__(self) -> None:
        if self.method not in FEDERATED:
            raise ConfigError(f"method must be one of {', '.join(FEDERATED)}, got {self.method!r}")

    @classmethod
    def from_settings(cls, settings: dict[str, dict], **run: Any) -> "FederatedRun":
        """From {section: {field: value}} (CLI options, a grid cell); every setting is validated here."""
        unknown = sorted(set(settings) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown settings section(s) {unknown}; known: {', '.join(SECTIONS)}")
        try:
            return cls(**run, **{name: SECTIONS[name](**values) for name, values in settings.items()})
        except TypeError as err:
            raise ConfigError(str(err)) from None

    @property
    def uses_gate(self) -> bool:
        return METHODS[self.method].uses_gate

    def mop_config(self, tasks: list[str]) -> MoPConfig:
        return replace(self.mop, use_gate=self.uses_gate, tasks=list(tasks), init_seed=self.seed)

    def train_config(self, steps: int, seed: int) -> TrainConfig:
        """Local training settings (also the server's recovery and gate pretraining): the central ones, with
        `steps` steps, seed `seed`, no checkpoints (rounds are the checkpoints)."""
        return replace(self.train, steps=steps, seed=seed, checkpoint_every=0)

    def settings(self) -> dict:
        """The nested settings as JSON values (`settings.json` of the run, the results' ``settings``)."""
        return asdict(self)

    def to_record(self) -> dict[str, int | float | bool | str]:
        """The Flower run config: flattened nested settings, None as ``""``, lists comma-joined."""
        def encode(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: encode(v) for k, v in value.items()}
            if value is None:
                return ""
            return ",".join(value) if isinstance(value, list) else value
        from flwr.common.config import flatten_dict  # here: the settings (and `mops train`) work without Flower

        return flatten_dict(encode(asdict(self)))

    @classmethod
    def from_record(cls, record: typing.Mapping[str, Any]) -> "FederatedRun":
        """Inverse of `to_record`; keys that are no setting (e.g. Flower's ``server-round``) are ignored."""
        from flwr.common.config import unflatten_dict

        nested = unflatten_dict({k: v for k, v in record.items() if "." in k or k in ("output", "method", "seed")})
        values: dict[str, Any] = {k: nested[k] for k in ("output", "method", "seed") if k in nested}
        for name, section in SECTIONS.items():
            hints = typing.get_type_hints(section)
            values[name] = section(**{f.name: _decode(nested[name][f.name], hints[f.name])
                                      for f in fields(section) if f.name in nested.get(name, {})})
        return cls(**values)


def _decode(value: Any, tp: Any) -> Any:
    """A Flower config value back to the field's type (``""`` -> None where the field allows None)."""
    base, optional = unwrap_optional(tp)
    if optional and value == "":
        return None
    if typing.get_origin(base) is list:
        return [v for v in str(value).split(",") if v]
    if base is float and isinstance(value, int):
        return float(value)
    return value

