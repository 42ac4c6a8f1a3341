"""Typed results of a run, with to/from JSON in the layout of `results.json` (committed result folders read
back unchanged).

    RunResult             results.json of one seed (`mops train`) or one federated run (`mops federate`)
      .methods[name]      MethodResult: losses, evaluations along the way, the final one, parameter count
        .final            Evaluation: step, per-task and overall PPL, (tasks x experts) gate matrix
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OVERALL = "overall"


@dataclass
class Evaluation:
    """One scoring of the test split: `ppl` is `PerplexityReport.to_dict()`; `gate` (tasks x experts) when the
    gate was on."""

    step: int
    ppl: dict
    gate: list[list[float]] | None = None
    generation: dict | None = None  # `TaskMetrics.to_dict()` of greedy answers (rougeL, exact_match)

    def task_ppl(self, task: str = OVERALL) -> float:
        """PPL of one task, or of all tokens together (``"overall"``)."""
        return self.ppl["overall"]["ppl"] if task == OVERALL else self.ppl["per_task"][task]["ppl"]

    @property
    def overall(self) -> float:
        return self.task_ppl(OVERALL)

    def metric(self, name: str, task: str = OVERALL) -> float | None:
        """rougeL / exact_match of one task or overall (None when not scored)."""
        if self.generation is None:
            return None
        return (self.generation["overall"] if task == OVERALL else self.generation["per_task"][task])[name]

    def to_dict(self) -> dict:
        out = {"step": self.step, "ppl": self.ppl, "gate": self.gate, "generation": self.generation}
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict) -> "Evaluation":
        return cls(step=data["step"], ppl=data["ppl"], gate=data.get("gate"), generation=data.get("generation"))


@dataclass
class MethodResult:
    """One trained method: training losses, evaluations during training, the final evaluation.

    Federated runs add `rounds` (per round: time, bytes, clients, loss, and its evaluation under ``eval``), and
    a method with a gate per client `client_finals` (per partition: ``{"partition", "own_gate", "eval"}``, the
    final experts scored with that client's gate)."""

    final: Evaluation
    losses: list[float] = field(default_factory=list)
    evals: list[Evaluation] = field(default_factory=list)
    trainable_parameters: int | None = None
    seconds: float | None = None
    rounds: list[dict] | None = None
    adapter: dict | None = None  # peft methods: rank, targets, and the MoPs count it was matched to (or None)
    client_finals: list[dict] | None = None

    @property
    def client_evaluations(self) -> list[Evaluation] | None:
        """Per partition, the final evaluation under that client's own gate (None: one global adapter)."""
        return None if self.client_finals is None else [Evaluation.from_dict(c["eval"]) for c in self.client_finals]

    @property
    def evaluations(self) -> list[Evaluation]:
        """Every evaluation before the final one (federated: one per round)."""
        if self.rounds is not None:
            return [Evaluation.from_dict(r["eval"]) for r in self.rounds]
        return self.evals

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"losses": self.losses, "final": self.final.to_dict(),
                               "trainable_parameters": self.trainable_parameters}
        if self.rounds is not None:
            out["rounds"] = self.rounds
        else:
            out["evals"] = [e.to_dict() for e in self.evals]
        if self.seconds is not None:
            out["seconds"] = self.seconds
        if self.adapter is not None:
            out["adapter"] = self.adapter
        if self.client_finals is not None:
            out["client_finals"] = self.client_finals
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "MethodResult":
        return cls(final=Evaluation.from_dict(data["final"]), losses=data.get("losses", []),
                   evals=[Evaluation.from_dict(e) for e in data.get("evals", [])],
                   trainable_parameters=data.get("trainable_parameters"), seconds=data.get("seconds"),
                   rounds=data.get("rounds"), adapter=data.get("adapter"), client_finals=data.get("client_finals"))


_RUN_KEYS = ("tasks", "settings", "base", "versions", "recovery", "input_prompts_only", "gate_pretrain", "clients")


@dataclass
class RunResult:
    """Everything one run (one seed) produced: the shared stages, then each method from the same state."""

    tasks: list[str]
    input_prompts_only: Evaluation
    methods: dict[str, MethodResult] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    base: dict | None = None
    versions: dict | None = None
    recovery: dict = field(default_factory=dict)
    gate_pretrain: dict | None = None  # its losses, and "gate": the (tasks x experts) matrix after it
    clients: list[list[int]] | None = None  # federated: (clients x tasks) training examples of each partition

    def ppl(self, method: str, task: str = OVERALL) -> float:
        """Final test PPL of `method` on `task` (or overall)."""
        return self.methods[method].final.task_ppl(task)

    @property
    def pretrained_gate(self) -> list[list[float]] | None:
        return (self.gate_pretrain or {}).get("gate")

    def merged(self, other: "RunResult") -> "RunResult":
        """This run's methods plus `other`'s (federated: one Flower run per method, same P^1)."""
        return RunResult(**{**self.__dict__, "methods": {**self.methods, **other.methods},
                            "gate_pretrain": self.gate_pretrain or other.gate_pretrain,
                            "clients": self.clients or other.clients})

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"tasks": self.tasks, "settings": self.settings, "base": self.base,
                               "versions": self.versions, "recovery": self.recovery,
                               "input_prompts_only": self.input_prompts_only.to_dict(),
                               "gate_pretrain": self.gate_pretrain, "clients": self.clients}
        out = {k: v for k, v in out.items() if v is not None}  # results from before a field existed lack it
        return out | {m: r.to_dict() for m, r in self.methods.items()}

    @classmethod
    def from_dict(cls, data: dict) -> "RunResult":
        methods = {k: MethodResult.from_dict(v) for k, v in data.items()
                   if k not in _RUN_KEYS and isinstance(v, dict) and "final" in v}
        return cls(tasks=data["tasks"], input_prompts_only=Evaluation.from_dict(data["input_prompts_only"]),
                   methods=methods, settings=data.get("settings", {}), base=data.get("base"),
                   versions=data.get("versions"), recovery=data.get("recovery", {}),
                   gate_pretrain=data.get("gate_pretrain"), clients=data.get("clients"))
