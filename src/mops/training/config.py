"""`TrainConfig`: budgets and optimiser settings of the paper's three training stages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mops.errors import ConfigError
from mops.evaluation.generation import METRICS


@dataclass
class TrainConfig:
    """Stage 1 recovers P^1 (input prompt tuning), stage 2 pretrains the gate, stage 3 trains experts + gate."""

    steps: int = field(default=200, metadata={"stage": "main", "help": "Optimiser steps of the main stage (paper: 20,000 at batch 1)."})
    batch_size: int = field(default=8, metadata={"flags": ("-b",), "help": "Global examples per optimiser step (all processes)."})
    grad_accum: int = field(default=1, metadata={"help": "Micro-batches per process per step."})
    lr: float = field(default=1e-2, metadata={"stage": "lr", "help": "Prompt learning rate, constant (paper: 1e-3, which "
                                                    "under-trains both methods on small models)."})
    gate_lr: float | None = field(default=1e-4, metadata={"stage": "gate", "help": "Gate learning rate (None: lr). Low keeps the "
                                                               "pretrained routing; higher rates collapse it."})
    baseline_lr: float | None = field(
        default=None, metadata={"stage": "lr", "help": "Prompt learning rate of the baseline (default: lr), so each method runs at "
                                        "its own tuned rate."}
    )
    gate_balance: float = field(
        default=0.0, metadata={"stage": "gate", "help": "Weight of the load-balancing loss log E - H(batch-mean gate) (0 = none)."}
    )
    recovery_steps: int = field(default=20, metadata={"help": "Input prompt (P^1) recovery steps (paper: 20)."})
    recovery_lr: float = field(default=1e-3, metadata={"help": "Learning rate of the recovery stage."})
    gate_pretrain_steps: int = field(default=300, metadata={"stage": "gate_pretrain", "help": "Gate pretraining steps (0 = none)."})
    gate_pretrain_lr: float = field(default=1e-3, metadata={"stage": "gate_pretrain", "help": "Gate pretraining learning rate."})
    gate_pretrain_examples: int = field(
        default=1000, metadata={"stage": "gate_pretrain", "help": "Instruction-only training examples for gate pretraining."}
    )
    gate_pretrain_batch_size: int = field(default=64, metadata={"stage": "gate_pretrain", "help": "Gate pretraining batch size."})
    gate_pretrain_smoothing: float = field(
        default=0.0, metadata={"stage": "gate_pretrain", "help": "Label smoothing of gate pretraining (soft task -> expert targets; 0 = hard)."}
    )
    lora_lr: float = field(
        default=1e-3, metadata={"stage": "lr", "help": "Learning rate of the LoRA weights (prompt rates make LoRA diverge)."}
    )
    ia3_lr: float = field(default=3e-2, metadata={"stage": "lr", "help": "Learning rate of the IA3 scaling vectors."})
    lora_r: int = field(default=2, metadata={"stage": "lora", "help": "LoRA rank (paper: 2)."})
    lora_alpha: float = field(default=32, metadata={"stage": "lora", "help": "LoRA alpha (paper: 32)."})
    lora_dropout: float = field(default=0.05, metadata={"stage": "lora", "help": "LoRA dropout (paper: 0.05)."})
    peft_targets: str = field(
        default="q_proj,v_proj", metadata={"stage": "peft", "help": "Comma-separated module names LoRA / IA3 adapt (paper: q, v)."}
    )
    match_parameters: bool = field(
        default=False, metadata={"stage": "peft", "help": "Size LoRA (its rank, on --peft-targets) and IA3 (its "
                                 "target modules) to the trainable-parameter count nearest this run's MoPs (the "
                                 "paper's Appendix E); the counts are recorded with the results."}
    )
    eval_every: int = field(default=0, metadata={"stage": "main", "help": "Evaluate every N steps (0: only at the end)."})
    eval_at: str = field(default="", metadata={
        "stage": "main", "help": "Comma-separated steps to evaluate after as well (e.g. 40,160 for a budget curve: the "
                                 "learning rate is constant, so step t of a longer run is a t-step run)."})
    eval_limit_per_task: int | None = field(default=None, metadata={"help": "Test examples per task to score."})
    eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size."})
    eval_metrics: str = field(default="ppl", metadata={
        "stage": "main", "help": "Comma-separated: ppl (always), rougeL, exact_match (ROUGE-L, and exact match on "
                                 "label tasks, of greedy answers to the test prompts; generation is slow on CPU). Federated runs "
                                 "score answers after the last round only (PPL every round)."})
    eval_max_new_tokens: int = field(default=64, metadata={
        "stage": "main", "help": "Answer length for rougeL / exact_match."})
    checkpoint_every: int = field(default=50, metadata={"stage": "never", "help": "Checkpoint every N steps (0: never)."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Clip gradients to this norm."})
    seed: int = field(default=0, metadata={"set_by_run": True, "help": "Seed of data order and initialisation."})
    group_by_length: bool = field(
        default=True,
        metadata={"help": "Batch examples of similar length together (less padding; the order is still a "
                          "function of seed and step, the same for baseline and MoPs)."},
    )
    deterministic: bool = field(
        default=False, metadata={"help": "torch deterministic algorithms (bit-identical re-runs where the hardware "
                                         "allows; slower on GPU)."},
    )
    cache_activations: bool = field(
        default=True,
        metadata={"help": "Reuse the hidden states entering the injection layer across steps, epochs, evals and "
                          "runs (exact; computed on first use, stored under MOPS_HOME/activations)."},
    )
    cache_dtype: str | None = field(
        default=None, metadata={"help": "Storage dtype of the cache: float32, bfloat16, float16 (default: the "
                                        "model's, which keeps training exact)."}
    )

    def __post_init__(self) -> None:
        for name in ("steps", "recovery_steps", "gate_pretrain_steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "grad_accum", "eval_batch_size", "gate_pretrain_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "recovery_lr", "gate_pretrain_lr", "gate_lr", "baseline_lr", "lora_lr", "ia3_lr"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ConfigError(f"TrainConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.eval_limit_per_task is not None and self.eval_limit_per_task < 1:
            raise ConfigError(f"TrainConfig.eval_limit_per_task must be >= 1 (or unset: the whole test split), "
                              f"got {self.eval_limit_per_task}")
        try:
            steps = self.eval_steps
        except ValueError:
            raise ConfigError(f"TrainConfig.eval_at must be comma-separated step numbers, got {self.eval_at!r}") from None
        if any(step < 1 for step in steps):
            raise ConfigError(f"TrainConfig.eval_at steps must be >= 1, got {self.eval_at!r}")
        unknown = set(self.metrics) - set(METRICS)
        if unknown or "ppl" not in self.metrics:
            raise ConfigError(f"TrainConfig.eval_metrics must list ppl and any of {', '.join(METRICS[1:])}, "
                              f"got {self.eval_metrics!r}")
        if self.eval_max_new_tokens < 1:
            raise ConfigError(f"TrainConfig.eval_max_new_tokens must be >= 1, got {self.eval_max_new_tokens}")
        if self.gate_balance < 0:
            raise ConfigError(f"TrainConfig.gate_balance must be >= 0, got {self.gate_balance}")
        if not 0 <= self.gate_pretrain_smoothing < 1:
            raise ConfigError(f"TrainConfig.gate_pretrain_smoothing must be in [0, 1), got {self.gate_pretrain_smoothing}")

    @property
    def eval_steps(self) -> set[int]:
        """The steps listed in `eval_at`."""
        return {int(s) for s in self.eval_at.split(",") if s.strip()}

    def evaluates_after(self, step: int) -> bool:
        """Whether training evaluates after `step` (every `eval_every` steps and at each `eval_at` step)."""
        return bool(self.eval_every and step % self.eval_every == 0) or step in self.eval_steps

    @property
    def metrics(self) -> list[str]:
        return [m.strip() for m in self.eval_metrics.split(",") if m.strip()]

    @property
    def generates(self) -> bool:
        """Whether evaluations generate answers (for rougeL / exact_match)."""
        return bool({"rougeL", "exact_match"} & set(self.metrics))

    @property
    def effective_gate_lr(self) -> float:
        return self.lr if self.gate_lr is None else self.gate_lr

    def to_dict(self) -> dict:
        return asdict(self)
