"""Flower ClientApp: train the global experts (+ gate) on this client's partition for `local_steps` steps.

Each training message carries the settings (a `ConfigRecord` made by `FederatedRun.to_record`), the global
trainable arrays (``arrays``) and the digest of the frozen state (``input-prompts``: P^1, and the pretrained
gate of a method that keeps it frozen); that state itself (``frozen``) comes with a client's first message only and is kept in the node's `Context.state`. The reply
carries the updated arrays and ``num-examples`` (the FedAvg weight). The partition id comes from the node config
(``partition-id``: set by the simulation engine, or by `flower-supernode --node-config` when deployed); a
query message asks for it (the server samples clients by partition).

Local gate personalisation (`mops_personal_gate`): a client starts its own gate from the pretrained one (part of
the frozen state), keeps it in `Context.state` after each round it trains and never sends it with its update; a
``personal_gate`` query after the last round asks for it, so that the server can score each client with its
own gate. Like P^1, it lives in the node's memory: a restarted node starts its gate again from the pretrained one.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from mops.federated.config import FederatedRun, parse_faults
from mops.federated.task import from_wire, gate_state, load_state, mean_loss, shared_setup, to_wire, trainable_state
from mops.training.logger import RunLogger
from mops.training.loop import Runtime, train_steps
from mops.tuners.mops.model import MoPModel
from mops.tuners.mops.prefix_cache import mop_logits_fn, open_prefix_cache
from mops.tuners.registry import METHODS

app = ClientApp()


def _before_training(kind: str | None, cfg: FederatedRun) -> None:
    """Fault tests (`inject_faults`): a client that crashes, or one that never answers in time."""
    if kind == "raise":
        raise RuntimeError("injected fault: this client raises")
    if kind == "hang":
        time.sleep(cfg.federation.round_timeout + 30)


def _corrupt(kind: str | None, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fault tests: an update with NaNs, or with a wrongly shaped array."""
    first = next(iter(state))
    if kind == "nan":
        state[first] = torch.full_like(state[first], math.nan)
    if kind == "shape":
        state[first] = state[first][:-1]
    return state


def local_train(cfg: FederatedRun, pid: int, server_round: int, trainable: dict[str, torch.Tensor],
                frozen: dict[str, torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, torch.Tensor]]:
    """Train the global arrays (from `frozen`: P^1 and a gate that does not travel) on partition `pid`;
    returns the new arrays, metrics and, where the method's gate is local, the gate as trained (the client
    keeps it; {} otherwise)."""
    setup = shared_setup(cfg)
    data = setup.encoded_partition(pid)
    model = MoPModel(setup.base, cfg.mop_config(setup.splits.tasks))
    model.set_stage("mop")
    load_state(model, trainable, frozen)
    tcfg = cfg.train_config(cfg.federation.local_steps, seed=cfg.seed * 100_003 + server_round * 1009 + pid)
    method = METHODS[cfg.method]
    groups = method.param_groups(model, tcfg)
    rt = Runtime(Accelerator(cpu=not torch.cuda.is_available()), RunLogger(Path("."), enabled=False), progress=False)
    pad_id = setup.base.tokenizer.pad_token_id
    cache = open_prefix_cache(model, data, pad_id, tcfg.cache_dtype)
    t0 = time.perf_counter()
    inner = mop_logits_fn(model, cache)
    mass = torch.zeros(model.config.num_experts, dtype=torch.float64)

    def logits_fn(batch: dict, positions: torch.Tensor) -> torch.Tensor:
        """The model's logits; sums the gate weights of the examples trained on (expert-wise aggregation)."""
        logits = inner(batch, positions)
        if model.last_gate_weights is not None:
            mass.add_(model.last_gate_weights.detach().double().sum(0).cpu())
        return logits

    params = [p for group in groups for p in group["params"]]
    start = [p.detach().clone() for p in params]
    mu = cfg.federation.proximal_mu

    def proximal() -> torch.Tensor:
        """FedProx: mu/2 ||w - w_global||^2 over the trained arrays."""
        return mu / 2 * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start))

    losses = train_steps(model, f"client-{pid}", groups, data, tcfg.steps, tcfg, rt, pad_id, logits_fn=logits_fn,
                         regulariser=proximal if mu else None)
    state = trainable_state(model, method.gate_travels)
    gate = gate_state(model) if method.local_gate else {}
    model.unload()
    metrics = {"num-examples": len(data), "loss": mean_loss(losses), "seconds": time.perf_counter() - t0}
    if mass.sum() > 0:  # the share of its trained examples' gate weight each expert got: (E,), sums to 1
        metrics |= {f"gate-mass-{e}": float(m) for e, m in enumerate(mass / mass.sum())}
    return state, metrics, gate


def _replace(context: Context, prefix: str, key: str, record: ArrayRecord) -> None:
    """Keep `record` under `key` in the node's state, dropping what earlier runs kept under `prefix`."""
    for old in [k for k in context.state if k.startswith(prefix) and k != key]:
        del context.state[old]
    context.state[key] = record


def held_frozen_state(msg: Message, context: Context) -> dict[str, torch.Tensor]:
    """The run's frozen state (P^1, and a gate the method keeps frozen): from the message (then kept in the
    node's state for later rounds) or from the state."""
    key = f"input-prompts-{msg.content['input-prompts']['digest']}"
    if "frozen" in msg.content:
        _replace(context, "input-prompts-", key, msg.content["frozen"])
    if key not in context.state:
        raise RuntimeError(f"this client does not hold the input prompts {key} (restarted?); the server sends "
                           "them again the next time it samples this client")
    return context.state[key].to_torch_state_dict()


def _gate_key(msg: Message) -> str:
    """Where a client keeps its own gate: per frozen state (the run and seed), as for P^1."""
    return f"personal-gate-{msg.content['input-prompts']['digest']}"


def keep_personal_gate(msg: Message, context: Context, gate: dict[str, torch.Tensor]) -> None:
    """Keep this client's gate for the run of `msg` (dropping those of other runs)."""
    _replace(context, "personal-gate-", _gate_key(msg), ArrayRecord({k: v.detach().cpu() for k, v in gate.items()}))


def personal_gate(msg: Message, context: Context) -> dict[str, torch.Tensor]:
    """This client's own gate for the run of `msg` ({} before it first trained: it uses the pretrained one)."""
    key = _gate_key(msg)
    return context.state[key].to_torch_state_dict() if key in context.state else {}


@app.query("personal_gate")
def query_personal_gate(msg: Message, context: Context) -> Message:
    """The server asks for this client's own gate after the last round (empty: it never trained)."""
    content = RecordDict({"arrays": ArrayRecord(personal_gate(msg, context)),
                          "metrics": MetricRecord({"partition-id": int(context.node_config["partition-id"])})})
    return Message(content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The server asks for this node's partition id (it samples clients by partition)."""
    pid = int(context.node_config["partition-id"])
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = FederatedRun.from_record(msg.content["config"])
    pid = int(context.node_config["partition-id"])
    server_round = int(msg.content["config"]["server-round"])
    trainable = from_wire(msg.content["arrays"])
    local = METHODS[cfg.method].local_gate
    frozen = held_frozen_state(msg, context) | (personal_gate(msg, context) if local else {})
    fault = parse_faults(cfg.federation.inject_faults).get(pid)
    _before_training(fault, cfg)
    state, metrics, gate = local_train(cfg, pid, server_round, trainable, frozen)
    if local:
        keep_personal_gate(msg, context, gate)
    state = _corrupt(fault, state)
    metrics["partition-id"] = pid
    return Message(RecordDict({"arrays": to_wire(state, cfg.federation.transport_dtype), "metrics": MetricRecord(metrics)}),
                   reply_to=msg)
