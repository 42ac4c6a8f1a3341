"""The method table: every method mops trains, registered once (`METHODS`).

An entry says what the method trains and at which learning-rate setting, whether it uses the gate, whether the
frozen-prefix cache applies, which peft adapter it attaches (and detaches afterwards), whose finished stage it
trains on, and which method its paired gain is measured against. Training, federated runs, reports and the
CLI read these fields; none of them tests a method's name. Adding a method = one entry here and its tests.

Hand-written because the table is what is new here: peft's own registry knows adapters, not which stage of
the paper's pipeline trains them or what they are compared with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from mops.errors import ConfigError

if TYPE_CHECKING:  # the table itself is read by the CLI at start-up: no torch import for it
    from torch import nn

    from mops.tuners.mops.model import MoPModel


class PeftSettings(Protocol):
    """The `TrainConfig` fields a peft adapter reads (duck-typed: tuners sit below training)."""

    lora_r: int
    lora_alpha: float
    lora_dropout: float
    peft_targets: str


@dataclass(frozen=True)
class Method:
    """One trainable method on a (compressed) base, sharing the pipeline's P^1, data order and evaluation."""

    name: str
    help: str
    lr_setting: str  # the TrainConfig field holding its learning rate ...
    lr_fallback: str | None = None  # ... or this one where that field is None (baseline_lr -> lr)
    uses_gate: bool = False  # experts weighted per input by the gate (else the slots are one prompt set)
    gate_start: str = "pretrained"  # the gate it starts from: after gate pretraining, or "random" (as initialised)
    trains_gate: bool = True  # with uses_gate: the gate MLP trains (False: it stays as it started)
    local_gate: bool = False  # federated: each client trains and keeps its own gate; only the experts travel
    routes_by_task: bool = False  # each input goes to the expert of its task label (the oracle; gate unused)
    peft: str | None = None  # a peft adapter attached to the base while it trains: lora or ia3
    trains_prompts: bool = True  # False: the slots stay at P^1, only the peft weights train
    on_frozen: str | None = None  # trains on top of this method's finished (frozen) stage
    compared_to: tuple[str, ...] = ()  # references of its paired gain, the first one the run has
    also_compared_to: tuple[str, ...] = ()  # further paired gains shown wherever these ran too (MoPs vs LoRA)
    gain_label: str | None = None  # column header of that gain in result tables (default "<name> vs <reference>")
    centralised: bool = True  # `mops train` runs it
    federated: bool = False  # `mops federate` runs it (on Flower)

    @property
    def prefix_cache(self) -> bool:
        """The frozen-prefix cache is exact while nothing below the injection layer trains: prompt methods, and
        MoPs on a frozen peft model (its cache is keyed by those frozen weights too)."""
        return self.peft is None or self.on_frozen is not None

    @property
    def gate_travels(self) -> bool:
        """Federated: the gate is part of every round's message (trained by clients and averaged). Otherwise
        a gated method's clients get the pretrained gate once, with P^1."""
        return self.uses_gate and self.trains_gate and not self.local_gate

    def lr(self, settings: object) -> float:
        """Its learning rate from a `TrainConfig`."""
        value = getattr(settings, self.lr_setting)
        return getattr(settings, self.lr_fallback) if value is None and self.lr_fallback else value

    def attach(self, lm: nn.Module, settings: PeftSettings, match: int | None = None):
        """Attach its peft adapter to `lm` in place (None for prompt methods), sized to `match` trainable
        parameters when given; `.unload()` detaches it."""
        if self.peft is None:
            return None
        from mops.tuners.peft_baselines import attach_peft

        return attach_peft(lm, self.peft, settings, match)

    def param_groups(self, model: MoPModel, settings: object) -> list[dict]:
        """Optimiser groups: the expert prompts at the method's rate and the gate MLP at the gate rate, or the
        peft weights inside the base.

        A learned gate strength (one scalar) moves at the prompts' rate: at a low gate rate Adam would move it by
        at most gate_lr per step, too slowly to ever matter.
        """
        lr = self.lr(settings)
        if not self.trains_prompts:
            return [{"params": [p for p in model.lm.parameters() if p.requires_grad], "lr": lr}]
        groups = [{"params": [model.expert_prompts], "lr": lr}]
        if self.uses_gate and self.trains_gate and not self.routes_by_task:
            mlp = [p for n, p in model.gate.named_parameters() if p.requires_grad and n != "strength"]
            groups.append({"params": mlp, "lr": settings.effective_gate_lr})
            if model.gate.strength.requires_grad:
                groups.append({"params": [model.gate.strength], "lr": lr})
        return groups

    def reference(self, methods: list[str] | tuple[str, ...]) -> str | None:
        """The method its gain is measured against in a run of `methods` (None: no pair)."""
        return next((m for m in self.compared_to if m in methods), None)



METHODS: dict[str, Method] = {m.name: m for m in (
    Method("baseline", "prompt tuning at the injection layer (no gate): the paper's baseline", "baseline_lr", "lr"),
    Method("mops", "Mixture of Prompts: experts + gate", "lr", uses_gate=True, compared_to=("baseline", "fedprompt"),
           also_compared_to=("lora",), gain_label="MoPs gain", federated=True),
    Method("lora", "LoRA through peft on the same base, P^1 and batches", "lora_lr", peft="lora", trains_prompts=False),
    Method("ia3", "IA3 through peft on the same base, P^1 and batches", "ia3_lr", peft="ia3", trains_prompts=False),
    Method("lora_mops", "MoPs trained on the run's frozen LoRA model (paper Table 8)", "lr", uses_gate=True,
           peft="lora", on_frozen="lora", compared_to=("lora",)),
    Method("fedprompt", "federated prompt tuning (no gate): the federated baseline", "baseline_lr", "lr",
           centralised=False, federated=True),
    Method("mops_frozen_gate", "federated MoPs whose gate stays as pretrained (clients get it once, with P^1): "
           "only the experts travel each round", "lr", uses_gate=True, trains_gate=False, compared_to=("fedprompt",),
           centralised=False, federated=True),
    Method("mops_personal_gate", "federated MoPs with local gate personalisation: each client trains its own copy of "
           "the pretrained gate and keeps it; only the experts travel each round (scored per client with its gate)",
           "lr", uses_gate=True, local_gate=True, compared_to=("fedprompt",), centralised=False, federated=True),
    # controls: where MoPs' gain comes from (each paired with the baseline of the same run)
    Method("oracle", "control: MoPs' experts routed by the task label (expert = task, one-hot; no gate): the "
           "routing ceiling", "lr", uses_gate=True, trains_gate=False, routes_by_task=True, compared_to=("baseline",)),
    Method("random_gate", "control: MoPs with a frozen randomly initialised gate (no pretraining, gate lr 0): does any "
           "input-dependent routing help?", "lr", uses_gate=True, gate_start="random", trains_gate=False,
           compared_to=("baseline",)),
    Method("mops_unpretrained", "control: MoPs whose gate learns from its random initialisation (no gate "
           "pretraining)", "lr", uses_gate=True, gate_start="random", compared_to=("baseline",)),
)}
CENTRALISED = tuple(m for m, e in METHODS.items() if e.centralised)
FEDERATED = tuple(m for m, e in METHODS.items() if e.federated)


def check_order(methods: list[str]) -> None:
    """A method that trains on another's finished stage needs that method earlier in the same run."""
    for i, name in enumerate(methods):
        needed = METHODS[name].on_frozen
        if needed and needed not in methods[:i]:
            raise ConfigError(f"--method: {name} trains on the finished {needed} stage: put {needed} before it "
                              f"(e.g. --method {needed},{name})")
