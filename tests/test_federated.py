"""Federated MoPs on Flower: partitions, update validation, simulation and deployment runs, faults, resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdam, FedAvgM
from flwr.supercore.task_identity import TaskIdentity
from safetensors.torch import load_file

from mops.data import load_splits
from mops.errors import ConfigError
from mops.federated.config import SERVER_OPTIMIZERS, FederatedRun, FederationConfig, parse_faults
from mops.models.config import ModelConfig
from mops.training.config import TrainConfig
from mops.federated.launcher import check_resumable, client_gpu_share, processes_with_env, run_federated
from mops.federated.partition import histogram, partition_examples, skew_sizes
from mops.federated.client_app import held_frozen_state, keep_personal_gate, personal_gate, query_personal_gate
from mops.federated.server_app import STRATEGIES, MopsFedAvg, MopsStrategy, make_strategy
from mops.federated.task import (FROZEN_KEY, frozen_state, load_state, payload_bytes, problems_with, to_wire,
                                 trainable_state)
from mops.evaluation.clients import client_scores, mix_ppl, task_shares
from mops.evaluation.results import Evaluation, RunResult
from mops.reports.run_report import method_client_scores
from mops.models import load_base_model
from mops.tuners.registry import METHODS
from mops.tuners.mops.model import MoPModel
from tests.test_cli import run_cli
from tests.test_mop_model import make_mop

TINY = {"data": dict(total=70, max_length=48), "mop": dict(num_experts=7, prompts_per_expert=1, injection_layer=2),
        "train": dict(recovery_steps=2, gate_pretrain_steps=20, gate_pretrain_examples=14, eval_limit_per_task=2,
                      batch_size=2)}


def tiny_run(output: Path, model: Path, **federation) -> FederatedRun:
    """A federated run of the tiny model with `federation` settings (2 local steps unless given)."""
    return FederatedRun.from_settings({**TINY, "model": {"model": str(model)},
                                       "federation": {"local_steps": 2, **federation}},
                                      output=str(output), method="mops")


def flower_processes(run: str) -> list[int]:
    """Live processes started for the run folder `run` (they carry its FLWR_HOME)."""
    return [pid for method in ("mops", "fedprompt")
            for pid in processes_with_env(f"FLWR_HOME={Path(run).resolve()}/flower/{method}/home")]


# --- settings and partitions ------------------------------------------------------------------------------------

def test_config_validation_and_round_trip() -> None:
    cfg = FederatedRun(output="x", method="fedprompt", model=ModelConfig(compress="sparsegpt:0.5"),
                       train=TrainConfig(lr=0.05, gate_lr=None, max_grad_norm=1.0),
                       federation=FederationConfig(num_clients=4, clients_per_round=2))
    record = cfg.to_record()  # Flower's run config: flat scalars under the nested names
    assert record["train.lr"] == 0.05 and record["federation.num_clients"] == 4 and record["train.gate_lr"] == ""
    assert all(isinstance(v, (int, float, str, bool)) for v in record.values())
    assert FederatedRun.from_record({**record, "server-round": 3}) == cfg
    with pytest.raises(ConfigError, match="clients_per_round"):
        FederationConfig(num_clients=2, clients_per_round=3)
    with pytest.raises(ConfigError, match="method"):
        FederatedRun(output="x", method="fedavg")
    with pytest.raises(ConfigError, match="partition"):
        FederationConfig(partition="zipf")
    with pytest.raises(ConfigError, match="unknown settings section"):
        FederatedRun.from_settings({"trian": {"lr": 1.0}}, output="x", method="mops")
    assert parse_faults("1:raise, 3:nan") == {1: "raise", 3: "nan"}
    with pytest.raises(ConfigError, match="PARTITION:KIND"):
        parse_faults("1:explode")


def test_skew_sizes_follow_the_paper() -> None:
    sizes = skew_sizes(642, 10, 15.0)
    assert sum(sizes) == 642 and sizes[0] == round(642 * 15 / 24)
    assert max(sizes[1:]) - min(sizes[1:]) <= 1
    assert sizes[0] / (sum(sizes[1:]) / 9) == pytest.approx(15, rel=0.05)


def test_skewed_partitions_give_each_client_one_piece_of_every_task() -> None:
    splits = load_splits("dolly")
    parts = partition_examples(splits.train, splits.tasks, 5, "skew", seed=0)
    counts = histogram(parts, splits.tasks)
    assert sum(map(sum, counts)) == len(splits.train)
    ids = [id(ex) for part in parts for ex in part]
    assert len(ids) == len(set(ids)) == len(splits.train)  # every example exactly once
    for t, column in enumerate(zip(*counts)):
        big = max(column)
        assert all(c > 0 for c in column)
        assert sorted(column)[-2] * 10 < big  # one client holds the 15x partition of this task
    owners = [max(range(5), key=lambda c: counts[c][t]) for t in range(len(splits.tasks))]
    assert len(set(owners)) > 1  # large partitions land on different clients
    assert partition_examples(splits.train, splits.tasks, 5, "skew", seed=0) == parts  # seeded
    assert partition_examples(splits.train, splits.tasks, 5, "skew", seed=1) != parts


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_flwr_datasets_partitioners_cover_the_data(scheme: str) -> None:
    splits = load_splits("dolly")
    parts = partition_examples(splits.train, splits.tasks, 4, scheme, seed=0, alpha=0.3)
    sizes = [len(p) for p in parts]
    assert sum(sizes) == len(splits.train)
    if scheme == "iid":
        assert max(sizes) - min(sizes) <= 1


def test_more_clients_than_examples_is_an_error() -> None:
    splits = load_splits("dolly", total=70)
    with pytest.raises(ConfigError, match="clients but only"):
        partition_examples(splits.train, splits.tasks, 1000, "iid")


def test_updates_with_nan_or_wrong_shapes_are_rejected() -> None:
    ref = {"expert_prompts": torch.zeros(7, 4), "gate.fc1.weight": torch.zeros(3, 4)}
    assert problems_with({k: v.clone() for k, v in ref.items()}, ref) is None
    assert "NaN" in problems_with({**ref, "expert_prompts": torch.full((7, 4), math.nan)}, ref)
    assert "Inf" in problems_with({**ref, "gate.fc1.weight": torch.full((3, 4), math.inf)}, ref)
    assert "shape (6, 4)" in problems_with({**ref, "expert_prompts": torch.zeros(6, 4)}, ref)
    assert "differ" in problems_with({"expert_prompts": torch.zeros(7, 4)}, ref)


def test_fedprompt_message_holds_the_prompts_it_trains() -> None:
    """Prompt tuning (no gate, merge routing) sends num_slots x hidden values, not the 7 expert copies; loading
    them back gives the same merged slots. MoPs sends every expert and the gate."""
    mop = make_mop(routing="merge", num_experts=7, prompts_per_expert=2)
    with torch.no_grad():
        mop.expert_prompts.normal_()
    hidden = mop.expert_prompts.shape[-1]
    mop.use_gate_(False)
    state = trainable_state(mop)
    assert set(state) == {"prompts"} and tuple(state["prompts"].shape) == (mop.config.num_slots, hidden) == (2, hidden)
    merged = mop.expert_prompts.detach().view(7, 2, hidden).mean(0)
    torch.testing.assert_close(state["prompts"], merged)
    other = make_mop(routing="merge", num_experts=7, prompts_per_expert=2, seed=1)
    other.use_gate_(False)
    load_state(other, state, frozen_state(mop))
    torch.testing.assert_close(other.expert_prompts.detach().view(7, 2, hidden).mean(0), merged)
    torch.testing.assert_close(other.input_prompts.detach(), mop.input_prompts.detach())
    mop.use_gate_(True)
    gated = trainable_state(mop)
    assert tuple(gated["expert_prompts"].shape) == (14, hidden) and any(k.startswith("gate.") for k in gated)
    sizes = payload_bytes(ArrayRecord(gated))
    assert set(sizes) == {"experts", "gate"} and sum(sizes.values()) == ArrayRecord(gated).count_bytes()


class _Nodes:
    """The part of a Flower Grid that sampling reads: connected node ids, and answers to the partition query
    (`partitions`: node id -> partition id; a node missing from it does not answer)."""

    def __init__(self, partitions: dict[int, int] | None = None, connected: list[int] | None = None) -> None:
        self.partitions = {11: 0, 12: 1} if partitions is None else partitions
        self.connected = list(self.partitions) if connected is None else connected
        self.asked: list[int] = []

    def get_node_ids(self) -> list[int]:
        return list(self.connected)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            self.asked.append(node)
            if node in self.partitions:
                replies.append(Message(RecordDict({"metrics": MetricRecord({"partition-id": self.partitions[node]})}),
                                       reply_to=msg))  # from node
        return replies


def test_clients_are_sampled_by_partition_the_same_for_every_run_of_a_seed(monkeypatch) -> None:
    for name in ("_run_id", "_node_id", "_task_id"):  # what Flower sets in a ServerApp process
        monkeypatch.setattr(TaskIdentity, name, 1)
    frozen, arrays = ArrayRecord({FROZEN_KEY: torch.randn(3, 8)}), ArrayRecord({"prompts": torch.zeros(3, 8)})

    def partitions_per_round(grid: _Nodes, seed: int, offset: int = 0, rounds: int = 6) -> list[list[int]]:
        strategy = MopsFedAvg(frozen, {"prompts": torch.zeros(3, 8)}, offset, seed=seed, sample_fraction=0.25,
                              fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
        chosen = []
        for n in range(1, rounds + 1):
            messages = list(strategy.configure_train(n, arrays, ConfigRecord({}), grid))
            chosen.append(sorted(grid.partitions[m.metadata.dst_node_id] for m in messages))
            assert chosen[-1] == strategy.stats["partitions"]
        return chosen

    # two runs whose 10 nodes got other (random) ids, listed in another order: the same partitions every round
    first = _Nodes({1000 + 7 * p: p for p in range(10)})
    second = _Nodes({(p * 7919) % 104729 + 5: p for p in reversed(range(10))})
    runs = partitions_per_round(first, seed=3), partitions_per_round(second, seed=3)
    assert runs[0] == runs[1] and all(len(r) == 2 for r in runs[0])  # int(10 x 0.25)
    assert len({tuple(r) for r in runs[0]}) > 1  # rounds differ from each other
    assert partitions_per_round(first, seed=4) != runs[0]
    assert sorted(first.asked) == sorted([*first.partitions] * 2)  # each node asked once per run (two runs)
    # a resumed run (2 rounds done) samples what the uninterrupted run sampled in rounds 3..6
    assert partitions_per_round(_Nodes({2000 + p: p for p in range(10)}), seed=3, offset=2, rounds=4) == runs[0][2:]
    # a node that does not say its partition is left out; fewer connected nodes, fewer sampled
    silent = _Nodes({1: 0, 2: 1, 3: 2, 4: 3}, connected=[1, 2, 3, 4, 5])
    assert all(set(r) <= {0, 1, 2, 3} and len(r) == 1 for r in partitions_per_round(silent, seed=0, rounds=8))
    # ... and asked again after 1, 2, 4 rounds (rounds 1, 2, 4, 8), not every round: each unanswered query waits
    assert silent.asked.count(5) == 4 and all(silent.asked.count(n) == 1 for n in (1, 2, 3, 4))


def test_final_scoring_asks_every_node_still_unknown_and_keeps_the_back_off(monkeypatch) -> None:
    for name in ("_run_id", "_node_id", "_task_id"):  # what Flower sets in a ServerApp process
        monkeypatch.setattr(TaskIdentity, name, 1)
    strategy = MopsFedAvg(ArrayRecord({FROZEN_KEY: torch.randn(3, 8)}), {"prompts": torch.zeros(3, 8)}, 0, seed=0,
                          sample_fraction=0.5, fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1,
                          min_available_nodes=1)
    grid = _Nodes({1: 0, 2: 1}, connected=[1, 2, 3])
    assert strategy.discover(grid, [1, 2, 3], server_round=1) == {1: 0, 2: 1} and strategy.silent[3] == (1, 2)
    assert strategy.discover(grid, [1, 2, 3], server_round=1) == {1: 0, 2: 1} and grid.asked.count(3) == 1  # not due
    assert strategy.discover(grid, [1, 2, 3]) == {1: 0, 2: 1} and grid.asked.count(3) == 2  # asked: final scoring
    assert strategy.silent[3] == (1, 2)
    grid.partitions[3] = 2
    assert strategy.discover(grid, [1, 2, 3]) == {1: 0, 2: 1, 3: 2} and 3 not in strategy.silent
    assert grid.asked.count(1) == 1 and strategy.discover(grid, [2]) == {2: 1}


def test_input_prompts_travel_once_per_client_and_again_after_a_failure(monkeypatch) -> None:
    for name in ("_run_id", "_node_id", "_task_id"):  # what Flower sets in a ServerApp process
        monkeypatch.setattr(TaskIdentity, name, 1)
    frozen = ArrayRecord({FROZEN_KEY: torch.randn(3, 8)})
    arrays = ArrayRecord({"prompts": torch.zeros(3, 8)})
    strategy = MopsFedAvg(frozen, {"prompts": torch.zeros(3, 8)}, 0, fraction_train=1.0, fraction_evaluate=0.0,
                          min_train_nodes=1, min_available_nodes=1)

    def round_(n: int) -> dict[int, Message]:
        return {m.metadata.dst_node_id: m for m in strategy.configure_train(n, arrays, ConfigRecord({}), _Nodes())}

    first = round_(1)
    assert all("frozen" in m.content for m in first.values())
    digests = {m.content["input-prompts"]["digest"] for m in first.values()}
    assert len(digests) == 1
    p1 = payload_bytes(frozen)["input_prompts"]
    assert strategy.stats["bytes_sent_by_payload"] == {"prompts": 2 * arrays.count_bytes(), "input_prompts": 2 * p1}
    strategy.aggregate_train(1, [])  # nobody answered: both may have restarted
    assert all("frozen" in m.content for m in round_(2).values())
    reply = Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"loss": 1.0, "num-examples": 4})}),
                    reply_to=first[12])
    strategy.aggregate_train(2, [Message(Error(code=0, reason="crashed"), reply_to=first[11]), reply])
    third = round_(3)
    assert "frozen" in third[11].content and "frozen" not in third[12].content
    assert strategy.stats["clients_sent_input_prompts"] == 1
    assert strategy.stats["bytes_sent_by_payload"]["input_prompts"] == p1

    # the client keeps P^1 in its node state; one that lacks it (restarted) raises, so the server resends it
    context = Context(run_id=1, node_id=12, node_config={}, state=RecordDict(), run_config={})
    torch.testing.assert_close(held_frozen_state(first[12], context), frozen.to_torch_state_dict())
    torch.testing.assert_close(held_frozen_state(third[12], context), frozen.to_torch_state_dict())
    restarted = Context(run_id=1, node_id=12, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(RuntimeError, match="does not hold the input prompts"):
        held_frozen_state(third[12], restarted)


def test_a_personal_gate_stays_on_its_client_for_its_run_only(monkeypatch) -> None:
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    entry = METHODS["mops_personal_gate"]
    assert entry.uses_gate and entry.trains_gate and not entry.gate_travels and METHODS["mops"].gate_travels
    mop = make_mop(routing="merge", num_experts=7, prompts_per_expert=2)
    assert set(trainable_state(mop, entry.gate_travels)) == {"expert_prompts"}  # only the experts travel
    assert set(frozen_state(mop, entry.gate_travels)) == {FROZEN_KEY} | {f"gate.{k}" for k in mop.gate.state_dict()}
    trained = {id(p) for group in entry.param_groups(mop, TrainConfig()) for p in group["params"]}
    assert all(id(p) in trained for n, p in mop.gate.named_parameters() if n != "strength")  # clients train it

    def message(digest: str) -> Message:
        return Message(RecordDict({"input-prompts": ConfigRecord({"digest": digest})}), dst_node_id=5,
                       message_type="query.personal_gate")

    context = Context(run_id=1, node_id=5, node_config={"partition-id": 3}, state=RecordDict(), run_config={})
    assert personal_gate(message("run-a"), context) == {}  # never trained: it starts from the pretrained gate
    empty = query_personal_gate(message("run-a"), context)
    assert len(empty.content["arrays"]) == 0 and empty.content["metrics"]["partition-id"] == 3
    gate = {"gate.w": torch.randn(4, 3), "gate.b": torch.randn(3)}
    keep_personal_gate(message("run-a"), context, gate)
    kept = personal_gate(message("run-a"), context)
    assert set(kept) == set(gate) and all(torch.equal(kept[k], gate[k]) for k in gate)
    reply = query_personal_gate(message("run-a"), context)
    assert torch.equal(reply.content["arrays"].to_torch_state_dict()["gate.w"], gate["gate.w"])
    keep_personal_gate(message("run-b"), context, {"gate.w": torch.zeros(4, 3)})  # another run (seed) replaces it
    assert personal_gate(message("run-a"), context) == {}
    assert [k for k in context.state if k.startswith("personal-gate-")] == ["personal-gate-run-b"]


def test_personal_gates_score_each_client_with_its_own_gate(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "fed"
    common = ["federate", "--model", str(tiny_model_dir), "-o", str(run), "--clients", "2", "--clients-per-round", "2",
              "--rounds", "1", "--seeds", "0,1", "--total", "70", "--max-length", "48", "--prompts-per-expert", "1",
              "--injection-layer", "2", "--recovery-steps", "2", "--gate-pretrain-steps", "10",
              "--gate-pretrain-examples", "14", "--eval-limit-per-task", "2", "--local-steps", "2", "-b", "2",
              "--gate-lr", "0.05", "--method", "fedprompt,mops_frozen_gate,mops_personal_gate"]
    out = run_cli(*common)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = run / "seed-0" / "mops_personal_gate"
    round_ = json.loads((folder / "rounds" / "round-1" / "round.json").read_text())
    assert set(round_["bytes_received_by_payload"]) == {"experts"}  # the gate never travels back
    assert round_["bytes_sent_by_payload"]["gate"] > 0  # the pretrained one goes out once, with P^1
    result = json.loads((run / "seed-0" / "results.json").read_text())
    finals = result["mops_personal_gate"]["client_finals"]
    assert [c["partition"] for c in finals] == [0, 1] and all(c["own_gate"] for c in finals)
    pretrained = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
    gates = [load_file(str(folder / "personal_gates" / f"client-{pid}.safetensors")) for pid in (0, 1)]
    for gate in gates:  # each client trained its own copy of the pretrained gate, differently
        assert set(gate) <= set(pretrained) and any(not torch.equal(gate[k], pretrained[k]) for k in gate)
    assert any(not torch.equal(gates[0][k], gates[1][k]) for k in gates[0])
    # the per-client scores use each client's own evaluation, not the global adapter's (pretrained gate)
    own = [Evaluation.from_dict(c["eval"]) for c in finals]
    expected = [mix_ppl(own[i], result["tasks"], task_shares(result["clients"])[i]) for i in (0, 1)]
    assert method_client_scores(RunResult.from_dict(result), ["mops_personal_gate"])["mops_personal_gate"]["ppl"] == expected
    assert expected != client_scores(Evaluation.from_dict(result["mops_personal_gate"]["final"]), result["tasks"],
                                     result["clients"])["ppl"]
    fedprompt = client_scores(Evaluation.from_dict(result["fedprompt"]["final"]), result["tasks"], result["clients"])
    gains = [100 * (f - m) / f for f, m in zip(fedprompt["ppl"], expected)]
    pair = json.loads((run / "summary.json").read_text())["paired"]["others"]["mops_personal_gate vs fedprompt"]
    assert pair["clients"]["gain_per_seed"][0] == pytest.approx(sum(gains) / 2)  # every pair has its per-client line
    assert "Per client (PPL on its own task mix), mops_personal_gate vs fedprompt" in (run / "summary.md").read_text()
    # a re-run after the last round (its clients restarted without their gates) keeps the scores it had
    again = run_cli(*common)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run / "seed-0" / "results.json").read_text())["mops_personal_gate"]["client_finals"] == finals


def test_simulated_clients_get_a_gpu_share_where_cuda_is_visible() -> None:
    assert client_gpu_share(None, 4, cuda=True) == 0.25 and client_gpu_share(None, 4, cuda=False) == 0.0
    assert client_gpu_share(0.5, 4, cuda=True) == 0.5 and client_gpu_share(0.0, 4, cuda=True) == 0.0
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        client_gpu_share(1.0, 4, cuda=False)
    with pytest.raises(ConfigError, match=">= 0"):
        client_gpu_share(-1.0, 4, cuda=True)


def test_float16_transport_halves_the_arrays_and_averages_in_float32(monkeypatch) -> None:
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    prompts = torch.randn(64, 32)
    strategy = MopsFedAvg(ArrayRecord({FROZEN_KEY: torch.randn(3, 32)}), {"prompts": prompts}, 0, "float16",
                          fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    sent = {m.metadata.dst_node_id: m for m in strategy.configure_train(1, ArrayRecord({"prompts": prompts}),
                                                                         ConfigRecord({}), _Nodes())}
    wire = sent[11].content["arrays"]
    assert wire.to_torch_state_dict()["prompts"].dtype == torch.float16
    full = ArrayRecord({"prompts": prompts}).count_bytes()
    assert payload_bytes(wire)["prompts"] < 0.55 * full
    updates = {11: prompts + 1, 12: prompts - 3}
    replies = [Message(RecordDict({"arrays": to_wire({"prompts": u}, "float16"),
                                   "metrics": MetricRecord({"loss": 1.0, "num-examples": n})}), reply_to=sent[node])
               for (node, u), n in zip(updates.items(), (3, 1))]
    arrays, _ = strategy.aggregate_train(1, replies)
    averaged = arrays.to_torch_state_dict()["prompts"]
    assert averaged.dtype == torch.float32
    torch.testing.assert_close(averaged, prompts, atol=2e-2, rtol=0)  # (3 x (p + 1) + (p - 3)) / 4, fp16-rounded
    assert strategy.stats["bytes_received_by_payload"]["prompts"] == 2 * payload_bytes(wire)["prompts"]


def test_server_optimizers_apply_the_averaged_update(monkeypatch) -> None:
    """FedAvgM through the MoPs strategy: momentum carries the last round's step into the next; FedAdam gets its
    server learning rate; a gated method that keeps its pretrained gate sends the experts only."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    frozen = ArrayRecord({FROZEN_KEY: torch.zeros(1, 4)})
    ref = {"prompts": torch.zeros(2, 4)}
    kwargs = dict(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    adam = make_strategy(FederationConfig(server_optimizer="fedadam", server_lr=0.05), frozen, ref, 0, **kwargs)
    assert isinstance(adam, FedAdam) and isinstance(adam, MopsStrategy) and adam.eta == 0.05
    avgm = make_strategy(FederationConfig(server_optimizer="fedavgm", server_momentum=0.5), frozen, ref, 0, **kwargs)
    assert isinstance(avgm, FedAvgM) and type(make_strategy(FederationConfig(), frozen, ref, 0, **kwargs)) is MopsFedAvg

    def round_(n: int, global_value: float) -> float:
        arrays = ArrayRecord({"prompts": torch.full((2, 4), global_value)})
        sent = list(avgm.configure_train(n, arrays, ConfigRecord({}), _Nodes()))
        replies = [Message(RecordDict({"arrays": ArrayRecord({"prompts": torch.ones(2, 4)}),
                                       "metrics": MetricRecord({"loss": 1.0, "num-examples": 2})}), reply_to=m)
                   for m in sent]
        return float(avgm.aggregate_train(n, replies)[0].to_torch_state_dict()["prompts"][0, 0])

    assert round_(1, 0.0) == pytest.approx(1.0)  # step 1, momentum buffer -1
    assert round_(2, 1.0) == pytest.approx(1.5)  # no new step, half the last one again
    with pytest.raises(ConfigError, match="server_optimizer"):
        FederationConfig(server_optimizer="fedsgd")
    with pytest.raises(ConfigError, match="server_momentum"):
        FederationConfig(server_optimizer="fedavgm", server_momentum=1.0)
    with pytest.raises(ConfigError, match="server_momentum is a setting of fedavgm, not of fedadam"):
        FederationConfig(server_optimizer="fedadam", server_momentum=0.9)
    with pytest.raises(ConfigError, match="server_lr is a setting of"):
        FederationConfig(server_lr=0.5)
    assert set(STRATEGIES) == set(SERVER_OPTIMIZERS)  # every allowed name has its Flower strategy
    mop = make_mop(routing="merge", num_experts=7, prompts_per_expert=2)
    assert set(trainable_state(mop, gate_travels=False)) == {"expert_prompts"}
    # a gate the method keeps frozen travels once with P^1, so clients route with the server's pretrained gate
    fixed = frozen_state(mop, gate_travels=False)
    assert set(fixed) == {FROZEN_KEY} | {f"gate.{k}" for k in mop.gate.state_dict()}
    other = make_mop(routing="merge", num_experts=7, prompts_per_expert=2, seed=1)
    with torch.no_grad():
        next(other.gate.parameters()).add_(1.0)
    load_state(other, trainable_state(mop, gate_travels=False), fixed)
    for key, value in mop.gate.state_dict().items():
        torch.testing.assert_close(other.gate.state_dict()[key], value)
    assert set(frozen_state(mop)) == {FROZEN_KEY}  # MoPs trains its gate: it travels every round instead


def test_expertwise_aggregation_weights_each_expert_by_the_gate_mass_sent_to_it(monkeypatch) -> None:
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)
    ref = {"expert_prompts": torch.zeros(6, 4), "gate.w": torch.zeros(3)}  # 3 experts x 2 prompts
    fed = FederationConfig(aggregation="expertwise")
    strategy = make_strategy(fed, ArrayRecord({FROZEN_KEY: torch.zeros(2, 4)}), ref, 0, fraction_train=1.0,
                             fraction_evaluate=0.0, min_train_nodes=1, min_available_nodes=1)
    sent = {m.metadata.dst_node_id: m for m in strategy.configure_train(1, ArrayRecord(ref), ConfigRecord({}), _Nodes())}
    # client 11: 30 examples, experts all 1, gate mass (1, 0, 0); client 12: 10 examples, all 5, mass (0.5, 0, 0.5)
    replies = [Message(RecordDict({"arrays": ArrayRecord({"expert_prompts": torch.full((6, 4), v), "gate.w": torch.full((3,), v)}),
                                   "metrics": MetricRecord({"loss": 1.0, "num-examples": n, "gate-mass-0": m[0],
                                                            "gate-mass-1": m[1], "gate-mass-2": m[2]})}),
                       reply_to=sent[node])
               for node, v, n, m in ((11, 1.0, 30, (1.0, 0.0, 0.0)), (12, 5.0, 10, (0.5, 0.0, 0.5)))]
    arrays, _ = strategy.aggregate_train(1, replies)
    out = arrays.to_torch_state_dict()
    experts = out["expert_prompts"].view(3, 2, 4)
    assert experts[0].unique().item() == pytest.approx((30 * 1 + 5 * 5) / 35)  # both, by n x mass
    assert experts[1].unique().item() == pytest.approx((30 * 1 + 10 * 5) / 40)  # nobody routed: by n
    assert experts[2].unique().item() == pytest.approx(5.0)  # client 12 alone
    torch.testing.assert_close(out["gate.w"], torch.full((3,), 2.0))  # the gate: FedAvg by n
    with pytest.raises(ConfigError, match="expertwise"):
        FederationConfig(aggregation="expertwise", server_optimizer="fedadam")


def test_resuming_with_other_settings_is_refused(tmp_path: Path) -> None:
    def run(**federation) -> FederatedRun:
        return FederatedRun(output=str(tmp_path), method="mops", federation=FederationConfig(**federation))

    check_resumable(tmp_path / "mops", run(num_clients=4))
    check_resumable(tmp_path / "mops", run(num_clients=4, rounds=9))  # more rounds: fine
    with pytest.raises(ConfigError, match="federation.num_clients: 4 -> 5"):
        check_resumable(tmp_path / "mops", run(num_clients=5))


def test_cli_partition_histogram() -> None:
    out = run_cli("data", "partition", "--clients", "4", "--partition", "skew", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    payload = json.loads(out.stdout)
    assert len(payload["clients"]) == 4 and len(payload["tasks"]) == 7
    assert sum(map(sum, payload["clients"])) == 4497


# --- Flower runs ------------------------------------------------------------------------------------------------

def test_simulation_both_methods_then_resume(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "fed"
    common = ["federate", "--model", str(tiny_model_dir), "-o", str(run), "--clients", "3", "--clients-per-round", "2",
              "--total", "70", "--max-length", "48", "--prompts-per-expert", "1",
              "--injection-layer", "2", "--recovery-steps", "2", "--gate-pretrain-steps", "20",
              "--gate-pretrain-examples", "14", "--eval-limit-per-task", "2", "--local-steps", "2", "-b", "2", "--json",
              "--eval-metrics", "ppl,rougeL", "--eval-max-new-tokens", "4"]
    out = run_cli(*common, "--rounds", "2")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert summary["mops"]["overall"]["ppl"] > 1 and summary["fedprompt"]["overall"]["ppl"] > 1
    assert "MoPs gain" in (run / "results.md").read_text() and (run / "gate_final.png").is_file()
    assert "| mops | 2 |" in (run / "rounds.md").read_text()
    for method, gate in (("fedprompt", False), ("mops", True)):
        rounds = [json.loads((run / method / "rounds" / f"round-{n}" / "round.json").read_text()) for n in (1, 2)]
        for r in rounds:
            assert r["clients_sampled"] == 2 and r["clients_accepted"] == 2 and r["round_seconds"] > 0
            assert r["bytes_sent"] == sum(r["bytes_sent_by_payload"].values()) > 0
            assert set(r["bytes_received_by_payload"]) == ({"experts", "gate"} if gate else {"prompts"})
        # P^1 goes to the 2 clients of round 1, then only to a client not sampled before (3 clients, 2 per round)
        assert [r["clients_sent_input_prompts"] for r in rounds][0] == 2 and rounds[1]["clients_sent_input_prompts"] <= 1
        p1 = rounds[0]["bytes_sent_by_payload"]["input_prompts"] / 2
        assert rounds[1]["bytes_sent_by_payload"].get("input_prompts", 0) == rounds[1]["clients_sent_input_prompts"] * p1
        assert ("gate" in rounds[-1]["eval"]) is gate
        # answers (ROUGE-L) are scored after the last round only
        assert "generation" not in rounds[0]["eval"] and 0 <= rounds[1]["eval"]["generation"]["overall"]["rougeL"] <= 1
        records = [json.loads(line) for line in (run / method / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if r.get("stage") == f"{method}_round"] == [1, 2]
        assert list((run / method / "tensorboard").glob("events.*"))
    # FedPrompt sends the num_slots prompts it trains (1 x hidden here), MoPs the 7 experts and the gate; both
    # share the server's P^1 (same stage folder)
    fp, mp = (json.loads((run / m / "rounds" / "round-1" / "round.json").read_text()) for m in ("fedprompt", "mops"))
    hidden = load_base_model(str(tiny_model_dir)).model.config.hidden_size
    prompts = ArrayRecord({"prompts": torch.zeros(1, hidden)}).count_bytes()
    assert fp["bytes_received_by_payload"] == {"prompts": 2 * prompts}
    assert mp["bytes_received_by_payload"]["experts"] == 2 * ArrayRecord({"expert_prompts": torch.zeros(7, hidden)}).count_bytes()
    assert fp["bytes_sent_by_payload"]["input_prompts"] == mp["bytes_sent_by_payload"]["input_prompts"]
    # both methods trained the same partitions in each round (sampled by partition id, not Flower's node ids)
    parts = {m: [json.loads((run / m / "rounds" / f"round-{n}" / "round.json").read_text())["client_partitions"]
                 for n in (1, 2)] for m in ("fedprompt", "mops")}
    assert parts["fedprompt"] == parts["mops"] and all(len(p) == 2 and set(p) <= {0, 1, 2} for p in parts["mops"])
    text = (run / "results.md").read_text()
    assert "Communication" in text and "| fedprompt |" in text and "x fedprompt" in text
    assert "ROUGE-L mops - fedprompt" in text  # per client, on its task mix
    base = load_base_model(str(tiny_model_dir))
    adapter = MoPModel.from_pretrained(base, run / "mops" / "adapter")  # the centralised adapter format
    assert adapter.config.use_gate is True
    assert not flower_processes(str(run))

    first = (run / "mops" / "rounds" / "round-2" / "adapter.safetensors").read_bytes()
    again = run_cli(*common, "--rounds", "3", "--method", "mops")  # resumes after round 2
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "mops" / "rounds" / "round-2" / "adapter.safetensors").read_bytes() == first  # not retrained
    steps = [json.loads(line)["step"] for line in (run / "mops" / "metrics.jsonl").read_text().splitlines()
             if '"mops_round"' in line]
    assert steps == [1, 2, 3]
    third = json.loads((run / "mops" / "rounds" / "round-3" / "round.json").read_text())
    assert "generation" in third["eval"]  # the last round of the resumed run

    refused = run_cli(*common, "--rounds", "3", "--lr", "0.5", "--method", "mops")
    assert refused.returncode == 2 and "other settings" in refused.stderr


def test_paired_seeds_and_their_summary(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "fed"
    out = run_cli("federate", "--model", str(tiny_model_dir), "-o", str(run), "--clients", "2", "--clients-per-round",
                  "2", "--rounds", "1", "--seeds", "0,1", "--total", "70", "--max-length", "48", "--prompts-per-expert",
                  "1", "--injection-layer", "2", "--recovery-steps", "2", "--gate-pretrain-steps", "10",
                  "--gate-pretrain-examples", "14", "--eval-limit-per-task", "2", "--local-steps", "2", "-b", "2",
                  "--method", "fedprompt,mops_frozen_gate", "--server-optimizer", "fedavgm", "--server-momentum", "0.5",
                  "--eval-metrics", "ppl,rougeL", "--eval-max-new-tokens", "4", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    frozen_gate = json.loads((run / "seed-0" / "mops_frozen_gate" / "rounds" / "round-1" / "round.json").read_text())
    assert set(frozen_gate["bytes_received_by_payload"]) == {"experts"}  # the pretrained gate stays on the server
    assert frozen_gate["bytes_sent_by_payload"]["gate"] > 0  # ... and reaches each client once, with P^1
    assert summary["data"] == "dolly" and summary["compress"] is None and summary["seeds"] == [0, 1]
    per_seed = []
    for seed in (0, 1):
        result = json.loads((run / f"seed-{seed}" / "results.json").read_text())
        fp, mp = (result[m]["final"]["ppl"]["overall"]["ppl"] for m in ("fedprompt", "mops_frozen_gate"))
        per_seed.append(100 * (fp - mp) / fp)
    assert summary["per_seed"] == pytest.approx(per_seed)
    assert summary["gain_mean"] == pytest.approx(sum(per_seed) / 2)
    assert summary["gain_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / math.sqrt(2))
    assert 0 < summary["bytes_per_round"]["fedprompt"] < summary["bytes_per_round"]["mops_frozen_gate"]
    assert json.loads(out.stdout)["summary"]["gain_mean"] == pytest.approx(summary["gain_mean"])
    assert "Overall gain" in (run / "summary.md").read_text() and "Per client" in (run / "summary.md").read_text()
    assert len(summary["clients"]["rougeL_points_per_seed"]) == 2 and "ROUGE-L on its mix" in (run / "summary.md").read_text()
    ratio = summary["bytes_per_round"]["mops_frozen_gate"] / summary["bytes_per_round"]["fedprompt"]
    assert f"mops_frozen_gate {summary['bytes_per_round']['mops_frozen_gate']:,.0f} ({ratio:.2f}x)" in \
        (run / "summary.md").read_text()
    # per client: its training mix (2 clients x 7 tasks), PPL on that mix, gate mass heatmap
    result = json.loads((run / "seed-0" / "results.json").read_text())
    assert len(result["clients"]) == 2 and all(len(row) == 7 for row in result["clients"])
    assert sum(map(sum, result["clients"])) > 0
    assert all(s["examples"] > 0 for s in result["mops_frozen_gate"]["final"]["ppl"]["per_task"].values())
    assert "Per client" in (run / "seed-0" / "results.md").read_text() and (run / "seed-0" / "gate_clients.png").is_file()
    assert len(summary["clients"]["gain_per_seed"]) == 2 and len(summary["clients"]["spread_per_seed"]) == 2


def test_faulty_clients_are_dropped_and_the_round_completes(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = tiny_run(tmp_path / "fed", tiny_model_dir, num_clients=5, clients_per_round=5, rounds=1, round_timeout=45,
                   transport_dtype="float16",  # the client side of the float16 transport, end to end
                   inject_faults="0:raise,1:hang,2:nan,3:shape")
    folder = run_federated(cfg, "simulation", timeout=400)
    record = json.loads((folder / "rounds" / "round-1" / "round.json").read_text())
    assert record["clients_sampled"] == 5 and record["clients_accepted"] == 1
    assert record["clients_failed"] == 1 and record["clients_missing"] == 1 and record["clients_rejected"] == 2
    reasons = " ".join(record["rejections"])
    assert "partition 2: expert_prompts contains NaN" in reasons and "partition 3: expert_prompts has shape" in reasons
    assert math.isfinite(record["eval_ppl"])
    hidden = load_base_model(str(tiny_model_dir)).model.config.hidden_size
    experts16 = ArrayRecord({"expert_prompts": torch.zeros(7, hidden, dtype=torch.float16)}).count_bytes()
    sent, received = record["bytes_sent_by_payload"], record["bytes_received_by_payload"]
    assert sent["experts"] == 5 * experts16 and received["gate"] * 5 == sent["gate"] * 3  # 3 replies, all float16
    assert not flower_processes(cfg.output)


def test_deployment_superlink_and_two_supernodes(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Separate processes: a SuperLink and one SuperNode per client, driven by `flwr run`; all stopped after."""
    cfg = tiny_run(tmp_path / "fed", tiny_model_dir, num_clients=2, clients_per_round=2, rounds=2,
                   aggregation="expertwise")  # clients report their gate mass per expert; the server weights by it
    folder = run_federated(cfg, "deployment", timeout=400)
    logs = {p.name for p in (tmp_path / "fed" / "flower" / "mops").glob("*.log")}
    assert logs == {"flwr-run.log", "superlink.log", "supernode-0.log", "supernode-1.log"}
    results = json.loads((folder / "results.json").read_text())
    rounds = results["mops"]["rounds"]
    assert [r["step"] for r in rounds] == [1, 2] and all(r["clients_accepted"] == 2 for r in rounds)
    # each SuperNode keeps P^1 from round 1 (its Context.state): round 2 sends none
    assert [r["clients_sent_input_prompts"] for r in rounds] == [2, 0]
    assert all(r["expertwise"] for r in rounds)  # the clients' gate mass reached the server
    assert rounds[-1]["eval"]["ppl"]["overall"]["ppl"] > 1
    assert not flower_processes(cfg.output)


def test_deployment_client_that_disconnects_is_dropped(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Kill one SuperNode (and its ClientApp) after round 1: round 2 completes with the other two."""
    cfg = tiny_run(tmp_path / "fed", tiny_model_dir, num_clients=3, clients_per_round=3, rounds=2, round_timeout=30)
    run = threading.Thread(target=run_federated, args=(cfg, "deployment"), kwargs={"timeout": 400})
    run.start()
    first_round = tmp_path / "fed" / "mops" / "rounds" / "round-1" / "round.json"
    deadline = time.monotonic() + 300
    while not first_round.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert first_round.is_file()
    marker = f"FLWR_HOME={(tmp_path / 'fed').resolve()}/flower/mops/home"
    victims = [pid for pid in processes_with_env(marker)
               if b"partition-id=2" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(victims) == 1
    os.killpg(victims[0], signal.SIGKILL)
    run.join()
    second = json.loads((tmp_path / "fed" / "mops" / "rounds" / "round-2" / "round.json").read_text())
    assert second["clients_accepted"] == 2
    assert second["clients_missing"] == 1 or second["clients_sampled"] == 2  # timed out, or already gone
    assert json.loads((tmp_path / "fed" / "mops" / "results.json").read_text())["mops"]["final"]
    assert not flower_processes(cfg.output)


def test_sigterm_stops_every_flower_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = tmp_path / "fed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mops.cli.app", "federate", "--method", "mops", "--model", str(tiny_model_dir),
         "-o", str(run), "--clients", "2", "--clients-per-round", "2", "--rounds", "50", "--total", "70",
         "--max-length", "48", "--prompts-per-expert", "1", "--injection-layer", "2", "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = run / "flower" / "mops" / "flwr-run.log"
    deadline = time.monotonic() + 120
    while not started.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert started.is_file()
    time.sleep(3)
    assert flower_processes(str(run))
    proc.terminate()
    assert proc.wait(60) != 0
    assert not flower_processes(str(run))


def test_proximal_term_keeps_local_training_near_the_global_arrays(tmp_path: Path, tiny_model_dir: Path) -> None:
    from mops.federated.client_app import local_train
    from mops.federated.task import shared_setup

    moved = {}
    for mu in (0.0, 1000.0):
        cfg = tiny_run(tmp_path / "fed", tiny_model_dir, num_clients=2, clients_per_round=2, local_steps=8,
                       proximal_mu=mu)
        setup = shared_setup(cfg)
        model = MoPModel(setup.base, cfg.mop_config(setup.splits.tasks))
        start, frozen = trainable_state(model), frozen_state(model)
        model.unload()
        state, metrics, _ = local_train(cfg, 0, 1, start, frozen)
        moved[mu] = math.sqrt(sum(float(((state[k] - start[k]) ** 2).sum()) for k in start))
        assert math.isfinite(metrics["loss"]) and abs(sum(metrics[f"gate-mass-{e}"] for e in range(7)) - 1) < 1e-6
    assert 0 < moved[1000.0] < 0.5 * moved[0.0]
    with pytest.raises(ConfigError, match="proximal_mu"):
        FederationConfig(proximal_mu=-1.0)
