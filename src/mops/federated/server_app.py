"""Flower ServerApp: server-side setup (P^1, gate pretraining), then FedAvg rounds of experts (+ gate).

Per round the server samples `clients_per_round` clients by partition id with a generator seeded by (seed,
round), so every method of a seed trains the same clients in the same round (Flower's own sampling draws from
node ids that are random per run), sends them the global arrays (and P^1 to a client that does not hold it
yet), rejects replies that errored or carry NaN/Inf or wrongly shaped arrays, averages the rest weighted by
their example counts (Flower's FedAvg, or the server optimiser chosen), then scores the global adapter on the
test split (per-task PPL, gate matrix), logs bytes sent/received per payload, the sampled partitions and the
round time, and checkpoints. A restarted run continues after the last finished round.

With local gate personalisation (`mops_personal_gate`) the global adapter is the experts with the pretrained
gate; after the last round the server asks every client for the gate it kept (`personal_gates`, one-off) and
scores each client's own gate with the final experts on the test split (`client_finals`: what the per-client
scores of the report use), and saves those gates beside the adapter.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Iterable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedYogi
from safetensors.torch import load_file, save_file

from mops.evaluation.results import MethodResult
from mops.federated.config import FederatedRun, FederationConfig
from mops.federated.partition import histogram
from mops.federated.task import (digest, from_wire, frozen_state, load_state, mean_loss, payload_bytes, problems_with,
                                 shared_setup, to_wire, trainable_state)
from mops.training.loop import Runtime
from mops.training.pipeline import Pipeline
from mops.tuners.mops.model import MoPModel
from mops.tuners.registry import METHODS

app = ServerApp()


def _add(total: dict[str, int], part: dict[str, int]) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0) + value


def ask_partitions(grid: Grid, nodes: list[int], timeout: float) -> dict[int, int]:
    """node id -> partition id of those `nodes` that answer a query message within `timeout` seconds."""
    queries = [Message(content=RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    return {r.metadata.src_node_id: int(r.content["metrics"]["partition-id"])
            for r in grid.send_and_receive(queries, timeout=timeout) if not r.has_error()}


def personal_gates(grid: Grid, partitions: dict[int, int], frozen_digest: str, timeout: float
                   ) -> tuple[dict[int, dict[str, torch.Tensor]], int]:
    """Partition id -> the gate that client kept (clients that never trained answer none), and the bytes
    received; `partitions`: node id -> partition id of the nodes to ask."""
    queries = [Message(content=RecordDict({"input-prompts": ConfigRecord({"digest": frozen_digest})}), dst_node_id=n,
                       message_type=f"{MessageType.QUERY}.personal_gate") for n in partitions]
    gates, received = {}, 0
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if reply.has_error() or not len(reply.content["arrays"]):
            continue
        received += reply.content["arrays"].count_bytes()
        gates[partitions[reply.metadata.src_node_id]] = from_wire(reply.content["arrays"])
    return gates, received


class _Sampled:
    """The grid as Flower's strategy sees it during `configure_train`: only the nodes `MopsStrategy` sampled are
    connected, so the strategy (fraction_train 1) sends to exactly those."""

    def __init__(self, grid: Grid, nodes: list[int]) -> None:
        self.grid, self.nodes = grid, nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def __getattr__(self, name: str):
        return getattr(self.grid, name)


class MopsStrategy:
    """Mixed into a Flower strategy (FedAvg, FedAvgM, FedAdam, FedYogi: `STRATEGIES`): sends the frozen state
    (P^1, and a gate the method keeps frozen: `frozen_state`) to each client once, validates every update, and counts bytes (per payload) and failures; the strategy
    itself aggregates the accepted updates.

    P^1 travels with a client's first message only: every message names its digest, and the client keeps it
    (Flower's per-node `Context.state`). A client that fails or does not answer may have restarted without it,
    so it gets P^1 again the next time it is sampled (one that lacks it raises, which counts as failed).

    Sampling (`sample`): int(`sample_fraction` x connected nodes) partitions, drawn by a generator seeded with
    (`seed`, absolute round) from the connected nodes' partition ids (asked once per node with a query
    message; one that does not answer is asked again after 1, 2, 4, ... rounds); the strategy itself is built
    with fraction_train 1 and sends to exactly those."""

    def __init__(self, frozen: ArrayRecord, reference: dict, round_offset: int, transport: str = "float32",
                 expertwise: bool = False, *, seed: int = 0, sample_fraction: float = 1.0,
                 query_timeout: float = 60.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.frozen, self.reference, self.round_offset, self.transport = frozen, reference, round_offset, transport
        self.expertwise = expertwise
        self.seed, self.sample_fraction, self.query_timeout = seed, sample_fraction, query_timeout
        self.frozen_digest = digest(frozen.to_torch_state_dict())
        self.holders: set[int] = set()  # nodes that were sent P^1 and have not failed since
        self.partitions: dict[int, int] = {}  # node id -> partition id, as each node answered
        self.silent: dict[int, tuple[int, int]] = {}  # node id -> (unanswered queries, round it may be asked again)
        self.stats: dict = {}

    def discover(self, grid: Grid, nodes: list[int], server_round: int | None = None) -> dict[int, int]:
        """Node id -> partition for the `nodes` that said theirs. Nodes not known yet are asked: those due in
        `server_round` (a silent node is asked again after 1, 2, 4, ... rounds), or every one (None: the final
        scoring). Each unanswered query waits `query_timeout`."""
        due = [n for n in nodes if n not in self.partitions
               and (server_round is None or self.silent.get(n, (0, 0))[1] <= server_round)]
        if due:
            self.partitions |= ask_partitions(grid, due, self.query_timeout)
            for n in due:
                if n in self.partitions:
                    self.silent.pop(n, None)
                elif server_round is not None:
                    misses = self.silent.get(n, (0, 0))[0] + 1
                    self.silent[n] = (misses, server_round + 2 ** (misses - 1))
        return {n: self.partitions[n] for n in nodes if n in self.partitions}

    def sample(self, server_round: int, grid: Grid) -> list[int]:
        """The nodes that train in absolute round `server_round`: the same partitions for every method of a seed
        (and after a resume) whatever node ids Flower gave them; a node that does not say its partition is
        left out (and asked again later: `discover`)."""
        nodes = list(grid.get_node_ids())
        known = sorted((p, n) for n, p in self.discover(grid, nodes, server_round).items())
        k = min(len(known), max(1, int(len(nodes) * self.sample_fraction)))
        return [n for _, n in random.Random(self.seed * 1_000_003 + server_round).sample(known, k)]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        sent: dict[str, int] = {}
        messages, with_frozen = [], 0
        wire = to_wire(arrays.to_torch_state_dict(), self.transport)
        wire_bytes, frozen_bytes = payload_bytes(wire), payload_bytes(self.frozen)  # the same for every client
        chosen = self.sample(server_round + self.round_offset, grid)
        planned = super().configure_train(server_round + self.round_offset, arrays, config,
                                          _Sampled(grid, chosen)) if chosen else []
        for msg in planned:
            node = msg.metadata.dst_node_id
            content = RecordDict({**msg.content, "arrays": wire,
                                  "input-prompts": ConfigRecord({"digest": self.frozen_digest})})
            _add(sent, wire_bytes)
            if node not in self.holders:
                content["frozen"] = self.frozen
                _add(sent, frozen_bytes)
                self.holders.add(node)
                with_frozen += 1
            messages.append(Message(content=content, dst_node_id=node, message_type=msg.metadata.message_type))
        self.stats = {"start": time.perf_counter(), "sampled": len(messages), "rejected": [], "failed": 0,
                      "sent_to": {m.metadata.dst_node_id for m in messages}, "bytes_sent_by_payload": sent,
                      "clients_sent_input_prompts": with_frozen, "bytes_received_by_payload": {}, "client_losses": [],
                      "partitions": sorted(self.partitions[n] for n in chosen)}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        accepted, answered = [], set()
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self.stats["failed"] += 1
                self.holders.discard(node)
                continue
            answered.add(node)
            _add(self.stats["bytes_received_by_payload"], payload_bytes(msg.content["arrays"]))
            update = from_wire(msg.content["arrays"])
            msg.content["arrays"] = ArrayRecord(update)  # averaged in float32 whatever the transport
            problem = problems_with(update, self.reference)
            metrics = msg.content["metrics"]
            if problem:
                self.stats["rejected"].append(f"partition {int(metrics.get('partition-id', -1))}: {problem}")
                continue
            self.stats["client_losses"].append(float(metrics["loss"]))
            accepted.append(msg)
        self.holders -= self.stats["sent_to"] - answered  # silent clients may come back without P^1
        self.stats["accepted"] = len(accepted)
        self.stats["missing"] = self.stats["sampled"] - len(accepted) - len(self.stats["rejected"]) - self.stats["failed"]
        if not accepted:
            return None, None
        arrays, metrics = super().aggregate_train(server_round, accepted)
        if self.expertwise and arrays is not None and "expert_prompts" in arrays:
            experts = expertwise_average(accepted)
            self.stats["expertwise"] = experts is not None
            if experts is not None:
                arrays = ArrayRecord(arrays.to_torch_state_dict() | {"expert_prompts": experts})
        return arrays, metrics


def expertwise_average(replies: list[Message]) -> torch.Tensor | None:
    """Expert e of the new global experts = sum_i n_i m_ie x_ie / sum_i n_i m_ie over the accepted replies i
    (n_i: examples, m_ie: the share of its gate weight expert e got, x_ie: its expert e, (p, d)); an expert no
    client routed to gets the plain example-weighted average. None when the replies carry no gate mass.
    Written here because Flower's aggregators weight whole arrays, not slices of one."""
    metrics = [msg.content["metrics"] for msg in replies]
    experts = len([k for k in metrics[0] if k.startswith("gate-mass-")])
    if not experts:
        return None
    n = torch.tensor([float(m["num-examples"]) for m in metrics], dtype=torch.float64)  # (C,)
    mass = torch.tensor([[float(m[f"gate-mass-{e}"]) for e in range(experts)] for m in metrics],
                        dtype=torch.float64)  # (C, E)
    x = torch.stack([from_wire(msg.content["arrays"])["expert_prompts"] for msg in replies]).double()  # (C, E*p, d)
    x = x.view(len(replies), experts, -1, x.shape[-1])  # (C, E, p, d)
    w = n[:, None] * mass  # (C, E)
    plain = n[:, None].expand_as(w) / n.sum()
    w = torch.where(w.sum(0, keepdim=True) > 0, w / w.sum(0, keepdim=True).clamp_min(1e-300), plain)
    return torch.einsum("ce,cepd->epd", w, x).reshape(-1, x.shape[-1]).float()


STRATEGIES = {"fedavg": FedAvg, "fedavgm": FedAvgM, "fedadam": FedAdam, "fedyogi": FedYogi}  # by SERVER_OPTIMIZERS


class MopsFedAvg(MopsStrategy, FedAvg):
    """The default: Flower's FedAvg (weighted by client example counts) with `MopsStrategy`."""


def make_strategy(fed: FederationConfig, frozen: ArrayRecord, reference: dict, round_offset: int,
                  **kwargs) -> MopsStrategy:
    """The run's strategy: `fed.server_optimizer` with its server learning rate / momentum (Flower's defaults
    where `server_lr` is unset), mixed with `MopsStrategy`."""
    base = STRATEGIES[fed.server_optimizer]
    options: dict = {}
    if fed.server_optimizer == "fedavgm":
        options = {"server_momentum": fed.server_momentum,
                   **({"server_learning_rate": fed.server_lr} if fed.server_lr is not None else {})}
    elif fed.server_optimizer in ("fedadam", "fedyogi") and fed.server_lr is not None:
        options = {"eta": fed.server_lr}
    cls = MopsFedAvg if base is FedAvg else type(f"Mops{base.__name__}", (MopsStrategy, base), {})
    return cls(frozen, reference, round_offset, fed.transport_dtype, fed.aggregation == "expertwise", **options,
               **kwargs)


def wait_for_clients(grid: Grid, wanted: int, timeout: float) -> int:
    """Wait (at most `timeout` s) until `wanted` clients are connected; returns how many are."""
    deadline = time.monotonic() + timeout
    while len(connected := list(grid.get_node_ids())) < wanted and time.monotonic() < deadline:
        time.sleep(1.0)
    return len(connected)


def _last_round(rounds_dir: Path) -> int:
    done = [int(p.parent.name.split("-")[1]) for p in rounds_dir.glob("round-*/round.json")]
    return max(done, default=0)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = FederatedRun.from_record(context.run_config)
    fed = cfg.federation
    run_dir = Path(cfg.output)
    out = run_dir / cfg.method
    setup = shared_setup(cfg)
    model = MoPModel(setup.base, cfg.mop_config(setup.splits.tasks))
    rt = Runtime.create(out, progress=False)
    pipe = Pipeline(model, setup.splits, cfg.train_config(0, cfg.seed), run_dir, rt, cfg.data.max_length,
                    cfg.data.template)
    results = pipe.shared_stages(gate=cfg.uses_gate)
    results.settings = cfg.settings()
    results.clients = histogram(setup.partitions, setup.splits.tasks)
    model.use_gate_(cfg.uses_gate)
    rounds_dir = out / "rounds"
    offset = _last_round(rounds_dir)
    if offset:
        model.load_adapter_state(load_file(str(rounds_dir / f"round-{offset}" / "adapter.safetensors")))
    reference = trainable_state(model, METHODS[cfg.method].gate_travels)
    frozen_tensors = frozen_state(model, METHODS[cfg.method].gate_travels)
    frozen = ArrayRecord(frozen_tensors)
    rt.logger.log({"stage": "federation", "step": offset,
                   "clients_connected": wait_for_clients(grid, fed.num_clients, fed.round_timeout)})
    # Sample round(k / n) of the clients connected now: k while all are there, fewer after disconnects
    # (requiring k or n connected clients would wait forever once one has gone).
    strategy = make_strategy(fed, frozen, reference, offset, seed=cfg.seed,
                             sample_fraction=min(1.0, (fed.clients_per_round + 0.5) / fed.num_clients),
                             query_timeout=min(60.0, fed.round_timeout), fraction_train=1.0, fraction_evaluate=0.0,
                             min_train_nodes=1, min_available_nodes=1)

    def after_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        n = server_round + offset
        load_state(model, arrays.to_torch_state_dict(), frozen_tensors)
        evaluation = pipe.evaluate(cfg.method, n, answers=n == fed.rounds)  # PPL every round, answers at the end
        stats = strategy.stats
        record = {"stage": f"{cfg.method}_round", "step": n, "round_seconds": time.perf_counter() - stats["start"],
                  "bytes_sent": sum(stats["bytes_sent_by_payload"].values()),
                  "bytes_received": sum(stats["bytes_received_by_payload"].values()),
                  "bytes_sent_by_payload": stats["bytes_sent_by_payload"],
                  "bytes_received_by_payload": stats["bytes_received_by_payload"],
                  "clients_sent_input_prompts": stats["clients_sent_input_prompts"],
                  "expertwise": stats.get("expertwise", False),
                  "clients_sampled": stats["sampled"], "client_partitions": stats["partitions"],
                  "clients_accepted": stats["accepted"],
                  "clients_failed": stats["failed"], "clients_missing": stats["missing"],
                  "clients_rejected": len(stats["rejected"]), "client_loss": mean_loss(stats["client_losses"]),
                  "eval_ppl": evaluation.overall}
        rt.logger.log({**record, "rejections": stats["rejected"]})
        folder = rounds_dir / f"round-{n}"
        folder.mkdir(parents=True, exist_ok=True)
        save_file(model.adapter_state(), str(folder / "adapter.safetensors"))
        (folder / "round.json").write_text(json.dumps({**record, "rejections": stats["rejected"],
                                                       "eval": evaluation.to_dict()}, indent=2))
        return MetricRecord({"ppl": record["eval_ppl"]})

    if fed.rounds > offset:
        strategy.start(grid=grid, initial_arrays=ArrayRecord(reference), num_rounds=fed.rounds - offset,
                       timeout=fed.round_timeout, train_config=ConfigRecord(cfg.to_record()), evaluate_fn=after_round)
    rounds = [json.loads((rounds_dir / f"round-{n}" / "round.json").read_text()) for n in range(1, fed.rounds + 1)]
    final = load_file(str(rounds_dir / f"round-{fed.rounds}" / "adapter.safetensors"))
    client_finals = None
    if METHODS[cfg.method].local_gate:
        file = out / "client_finals.json"
        saved = json.loads(file.read_text()) if file.is_file() else {}
        if saved.get("round") != fed.rounds:
            saved = {"round": fed.rounds, "clients": score_personal_gates(grid, strategy, model, pipe, cfg, final, out)}
            file.write_text(json.dumps(saved))
        client_finals = saved["clients"]
    model.load_adapter_state(final)
    model.save_pretrained(out / "adapter")
    results.methods[cfg.method] = MethodResult.from_dict(
        {"final": rounds[-1]["eval"], "losses": [r["client_loss"] for r in rounds], "rounds": rounds,
         "trainable_parameters": sum(v.numel() for v in reference.values()), "client_finals": client_finals})
    (out / "results.json").write_text(json.dumps(results.to_dict(), indent=2))
    rt.logger.close()


def score_personal_gates(grid: Grid, strategy: MopsStrategy, model: MoPModel, pipe: Pipeline, cfg: FederatedRun,
                         final: dict[str, torch.Tensor], out: Path) -> list[dict]:
    """Per partition: the final experts with the gate that client kept (the pretrained one where it never
    trained, or did not answer), scored on the test split: ``{"partition", "own_gate", "eval"}``. The gates
    are saved under ``out/personal_gates``. Scored once per final round (``client_finals.json``): a resumed run
    whose clients restarted (and so lost their gates) reads the scores instead of asking again."""
    asked = strategy.discover(grid, list(grid.get_node_ids()))
    gates, received = personal_gates(grid, asked, strategy.frozen_digest, min(60.0, cfg.federation.round_timeout))
    folder = out / "personal_gates"
    folder.mkdir(exist_ok=True)
    scored = []
    for pid in range(cfg.federation.num_clients):
        model.load_adapter_state(final | gates.get(pid, {}))
        if pid in gates:
            save_file({k: v.contiguous() for k, v in gates[pid].items()}, str(folder / f"client-{pid}.safetensors"))
        evaluation = pipe.evaluate(f"{cfg.method}_client-{pid}", cfg.federation.rounds)
        scored.append({"partition": pid, "own_gate": pid in gates, "eval": evaluation.to_dict()})
    pipe.rt.logger.log({"stage": "personal_gates", "step": cfg.federation.rounds, "clients_with_own_gate": len(gates),
                        "bytes_received": received})
    return scored
