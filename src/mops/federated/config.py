"""`FederatedConfig`: one federated run (MoPs or FedPrompt), validated; travels as a Flower run config.

Flower run configs and `ConfigRecord`s hold flat scalars, so every field is an int, float, bool or str
(``""`` stands for "not set"). The server reads it from `context.run_config` and sends it to the clients
inside every training message, so a client needs no configuration of its own besides its partition id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from mops.errors import ConfigError

FED_METHODS = ("mops", "fedprompt")
PARTITIONS = ("skew", "iid", "dirichlet")
FAULTS = ("raise", "hang", "nan", "shape")


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
class FederatedConfig:
    """Settings of a federated run. Defaults: a CPU-sized run of the paper's setup (which is 100 clients,
    10 per round, 250 local steps, lr 1e-3, batch 1)."""

    output: str = field(default="runs/federated", metadata={"help": "Run folder (absolute path when deployed)."})
    method: str = field(default="mops", metadata={"help": "mops (experts + gate) or fedprompt (prompts only)."})
    model: str = field(default="smollm2-135m", metadata={"help": "Base model (short name, folder, hub id)."})
    compress: str = field(default="", metadata={"help": "Compression short form, e.g. sparsegpt:0.5+int8."})
    data: str = field(default="dolly", metadata={"help": "Data spec (bundled name, file, HF id)."})
    tasks: str = field(default="", metadata={"help": "Comma-separated tasks (default: the paper's)."})
    total: int = field(default=5000, metadata={"help": "Examples selected before the split."})
    max_length: int = field(default=128, metadata={"help": "Tokens per example."})
    num_clients: int = field(default=10, metadata={"help": "Clients (= partitions; paper: 100)."})
    clients_per_round: int = field(default=2, metadata={"help": "Clients sampled per round (paper: 10)."})
    rounds: int = field(default=3, metadata={"help": "Federated rounds."})
    local_steps: int = field(default=5, metadata={"help": "Optimiser steps per client per round (paper: 250)."})
    batch_size: int = field(default=4, metadata={"help": "Local batch size (paper: 1)."})
    lr: float = field(default=1e-2, metadata={"help": "Expert prompt learning rate (paper: 1e-3)."})
    gate_lr: float = field(default=1e-4, metadata={"help": "Gate learning rate."})
    partition: str = field(default="skew", metadata={"help": "skew (paper, App. A), iid or dirichlet."})
    skew_factor: float = field(default=15.0, metadata={"help": "skew: the large partition of a task is this many times the others."})
    dirichlet_alpha: float = field(default=0.5, metadata={"help": "dirichlet: concentration (smaller = more skewed)."})
    num_experts: int = field(default=7, metadata={"help": "Expert groups E."})
    prompts_per_expert: int = field(default=0, metadata={"help": "Prompts per expert (0: 70 with merge routing, "
                                                                  "10 with attention routing)."})
    routing: str = field(default="merge", metadata={"help": "merge or attention (see MoPConfig.routing)."})
    injection_layer: int = field(default=-1, metadata={"help": "Injection layer (-1: L/3)."})
    recovery_steps: int = field(default=5, metadata={"help": "Server-side P^1 recovery steps."})
    gate_pretrain_steps: int = field(default=200, metadata={"help": "Server-side gate pretraining steps."})
    gate_pretrain_examples: int = field(default=140, metadata={"help": "Instructions used for gate pretraining."})
    eval_limit_per_task: int = field(default=10, metadata={"help": "Test examples per task scored each round (0: all)."})
    round_timeout: float = field(default=600.0, metadata={"help": "Seconds to wait for clients each round."})
    seed: int = field(default=0, metadata={"help": "Seed of the split, partitions, sampling and training."})
    inject_faults: str = field(default="", metadata={"help": "Fault tests: PARTITION:KIND,... (raise, hang, nan, shape)."})

    def __post_init__(self) -> None:
        if self.method not in FED_METHODS:
            raise ConfigError(f"method must be one of {', '.join(FED_METHODS)}, got {self.method!r}")
        if self.partition not in PARTITIONS:
            raise ConfigError(f"partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}")
        for name in ("num_clients", "clients_per_round", "rounds", "local_steps", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.clients_per_round > self.num_clients:
            raise ConfigError(f"clients_per_round ({self.clients_per_round}) > num_clients ({self.num_clients})")
        if self.skew_factor < 1:
            raise ConfigError(f"skew_factor must be >= 1, got {self.skew_factor}")
        if self.dirichlet_alpha <= 0:
            raise ConfigError(f"dirichlet_alpha must be > 0, got {self.dirichlet_alpha}")
        parse_faults(self.inject_faults)

    @property
    def use_gate(self) -> bool:
        return self.method == "mops"

    def to_record(self) -> dict:
        """Flat scalars with Flower-style keys (``num-clients``) for run configs and `ConfigRecord`s."""
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    @classmethod
    def from_record(cls, record) -> "FederatedConfig":
        """Inverse of `to_record`; unknown keys (e.g. Flower's ``server-round``) are ignored, types restored."""
        values = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key in record:
                default = f.default
                values[f.name] = type(default)(record[key]) if default is not None else record[key]
        return cls(**values)
