"""The paper's pipeline on one seed: (1) P^1 recovery, (2) gate pretraining, (3) each method from the same state.

Each finished stage is stored (`stages.StageStore`); a re-run with the same run folder skips finished stages and
resumes the running one from its last checkpoint. Every method starts from the same stored shared state (same
P^1, same initial experts) and sees the same batches; what a method trains, at which rate, with or without the
gate or a peft adapter, comes from its registry entry (`mops.tuners.registry`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch

from mops.data import DataSplits, Encoded, Tokenizer
from mops.data.batching import collate
from mops.data.selection import first_per_task
from mops.errors import ConfigError
from mops.evaluation.gating import gate_matrix, weights_by_task
from mops.evaluation.generation import answer_metrics, greedy_fn, label_tasks
from mops.evaluation.perplexity import evaluate_perplexity
from mops.evaluation.results import Evaluation, MethodResult, RunResult
from mops.models.fingerprint import tensors_digest
from mops.provenance import versions
from mops.reports.figures import gate_heatmap_figure
from mops.reports.run_report import write_run_report
from mops.training.config import TrainConfig
from mops.training.gate_pretraining import pretrain_gate
from mops.training.loop import Runtime, train_steps
from mops.training.stages import StageStore, stage_key
from mops.training.state import PEFT_PREFIX, load_peft_weights, load_trainable_state, trainable_state
from mops.tuners.mops.model import MoPModel
from mops.tuners.mops.prefix_cache import PrefixCache, mop_logits_fn, open_prefix_cache
from mops.tuners.peft_baselines import adapter_settings
from mops.tuners.registry import METHODS, Method

T = TypeVar("T")


def _token_digest(encoded: Sequence[Encoded]) -> str:
    digest = hashlib.sha256()
    for enc in encoded:
        digest.update(json.dumps([enc.input_ids, enc.labels, enc.task_id]).encode())
    return digest.hexdigest()


@dataclass
class Pipeline:
    """One seed's run: a model with its adapter, the data encoded once, the stage store, where results go."""

    model: MoPModel
    splits: DataSplits
    train_cfg: TrainConfig
    run_dir: Path
    rt: Runtime
    max_length: int = 256
    template: str = "plain"
    train_enc: list[Encoded] = field(init=False)
    test_enc: list[Encoded] = field(init=False)

    def __post_init__(self) -> None:
        tok = Tokenizer(self.model.base.tokenizer, self.splits.tasks, self.max_length, self.template)
        self.tokenizer = tok
        self.train_enc = tok.encode_all(self.splits.train)
        test = self.splits.test
        if self.train_cfg.eval_limit_per_task is not None:
            test = first_per_task(test, self.train_cfg.eval_limit_per_task)
        self.test_examples = test
        self.test_enc = tok.encode_all(test)
        self.pad_id = self.model.base.tokenizer.pad_token_id
        self.device = self.rt.accelerator.device
        self.data_digest = _token_digest(self.train_enc) + _token_digest(self.test_enc)
        self.method: Method | None = None  # the method training now (None: shared stages)
        self.frozen_digest = ""  # of the frozen peft weights a method trains on (keys its prefix cache)
        self.store = StageStore(self.run_dir, self.rt.accelerator, lambda: trainable_state(self.model),
                                lambda state: load_trainable_state(self.model, state))

    def stage_key(self, name: str) -> str:
        """Digest of everything stage `name` depends on: base model, data tokens, and its settings."""
        base = self.model.base
        identity = {"base": base.identity, "base_path": str(base.path), "fingerprint": base.fingerprint,
                    "dtype": str(base.model.dtype), "data": self.data_digest, "max_length": self.max_length,
                    "template": self.template}
        return stage_key(name, identity, self.model.config, self.train_cfg)

    def cache(self, split: str) -> PrefixCache | None:
        """The prefix cache of `split` (train/test) in the MoP stage when enabled and exact, else None.

        The cache is keyed by P^1 among others, so opening it after recovery finds the right one.
        """
        exact = self.method is None or self.method.prefix_cache
        if not (self.train_cfg.cache_activations and self.model.stage == "mop" and exact):
            return None
        encoded = self.train_enc if split == "train" else self.test_enc
        return open_prefix_cache(self.model, encoded, self.pad_id, self.train_cfg.cache_dtype, frozen=self.frozen_digest)

    # ---- stages ---------------------------------------------------------------------------------------
    def recovery(self) -> dict:
        """Stage 1: train P^1 as plain input prompt tuning, freeze it, start the experts from it."""

        def run() -> dict:
            losses: list[float] = []
            cfg = self.train_cfg
            if cfg.recovery_steps and self.model.config.num_input_prompts:
                params = self.model.set_stage("recovery")
                losses = train_steps(
                    self.model, "recovery", [{"params": params, "lr": cfg.recovery_lr}], self.train_enc,
                    cfg.recovery_steps, cfg, self.rt, self.pad_id, self.store.checkpoints("recovery"),
                )
            self.model.set_stage("mop")
            self.model.init_expert_prompts(self.expert_examples() if self.model.config.prompt_init == "task_examples" else None)
            return {"losses": losses}

        result = self.store.run("recovery", self.stage_key("recovery"), run)
        self.model.set_stage("mop")
        return result

    def expert_examples(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """prompts_per_expert training examples per expert, taken round-robin from its tasks (task i -> i mod E)."""
        cfg = self.model.config
        groups = []
        for expert in range(cfg.num_experts):
            tasks = [t for t in range(len(self.splits.tasks)) if t % cfg.num_experts == expert]
            if not tasks:
                raise ConfigError(f"prompt_init='task_examples': expert {expert} has no task "
                                  f"({len(self.splits.tasks)} tasks for {cfg.num_experts} experts)")
            by_task = {t: [e for e in self.train_enc if e.task_id == t] for t in tasks}
            chosen = [by_task[tasks[i % len(tasks)]][i // len(tasks)] for i in range(cfg.prompts_per_expert)]
            batch = collate(chosen, self.pad_id)
            groups.append((batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)))
        return groups

    def gate_pretraining(self) -> dict:
        """Stage 2: the gate learns task -> expert on instructions only; the result has the gate matrix after it."""
        cfg = self.train_cfg
        n = cfg.gate_pretrain_examples
        prompts = self.tokenizer.encode_all(
            first_per_task(self.splits.train, max(1, n // len(self.splits.tasks))),
            prompt_only=True,
        )
        self.model.use_gate_(True)
        result = self.store.run("gate_pretrain", self.stage_key("gate_pretrain"),
                                lambda: pretrain_gate(self.model, prompts, cfg, self.rt, self.pad_id)
                                if cfg.gate_pretrain_steps else {})
        return {**result, "gate": self.gate_matrix()}

    def train(self, name: str) -> MethodResult:
        """Stage 3: one registered method for `train_cfg.steps`, evaluated along the way and at the end; its
        adapter is saved under `run_dir/<name>/` (peft adapters in peft's format)."""
        method = METHODS[name]
        self.method = method
        matched = self.model.mixture_parameters() if self.train_cfg.match_parameters else None
        peft = method.attach(self.model.lm, self.train_cfg, matched)
        try:
            if method.on_frozen:
                self._load_frozen(method.on_frozen)
            return self._train(method, None if peft is None or method.trains_prompts else adapter_settings(peft, matched))
        finally:
            self.method, self.frozen_digest = None, ""
            if peft is not None:
                if self.rt.is_main:  # lora_mops: the MoPs adapter is <name>/adapter, its LoRA beside it
                    peft.save_pretrained(str(self.run_dir / name / ("lora_adapter" if method.trains_prompts
                                                                    else "adapter")))
                peft.unload()

    def _load_frozen(self, name: str) -> None:
        """Train on top of this run's finished stage `name` (paper Table 8: MoPs on the LoRA-tuned model), frozen."""
        state = {k: v for k, v in self.store.finished_state(name).items() if k.startswith(PEFT_PREFIX)}
        load_peft_weights(self.model, state)
        self.frozen_digest = tensors_digest(state)
        self.model.lm.requires_grad_(False)
        self.model.lm.eval()  # frozen: no LoRA dropout either

    def _train(self, method: Method, adapter: dict | None) -> MethodResult:
        cfg = self.train_cfg
        self.model.use_gate_(method.uses_gate)
        self.model.set_stage("mop")
        if not method.trains_prompts:  # peft weights only: the slots stay at P^1
            self.model.expert_prompts.requires_grad_(False)
            self.model.lm.eval()
            for name, module in self.model.lm.named_modules():
                if name.endswith("lora_dropout") or ".lora_dropout." in name:
                    module.train()  # the adapter's own dropout, while training only
        if method.uses_gate and (not method.trains_gate or method.routes_by_task):
            self.model.gate.trainable_(False)  # controls: a frozen (or unused) gate is no trainable parameter
        groups = method.param_groups(self.model, cfg)
        evals: list[dict] = []

        def run() -> dict:
            losses = train_steps(
                self.model, method.name, groups, self.train_enc, cfg.steps, cfg, self.rt, self.pad_id,
                self.store.checkpoints(method.name), on_eval=lambda step: self.evaluate(method.name, step).to_dict(),
                logits_fn=self._routed(mop_logits_fn(self.model, self.cache("train"))), evals=evals,
            )
            return MethodResult(final=self.evaluate(method.name, cfg.steps), losses=losses,
                                evals=[Evaluation.from_dict(e) for e in evals],
                                trainable_parameters=self.model.trainable_parameters(), adapter=adapter).to_dict()

        result = MethodResult.from_dict(self.store.run(method.name, self.stage_key(method.name), run))
        if self.rt.is_main and method.trains_prompts:
            self.model.save_pretrained(self.run_dir / method.name / "adapter")
        return result

    # ---- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, label: str, step: int, answers: bool = True) -> Evaluation:
        """Per-task test PPL, the answer metrics the settings ask for (unless `answers` is False), and the
        (task x expert) gate matrix when the gate is on (in eval mode: no dropout)."""
        training = [m for m in self.model.lm.modules() if m.training]
        self.model.lm.eval()
        try:
            return self._evaluate(label, step, answers)
        finally:
            for module in training:
                module.train()

    def _evaluate(self, label: str, step: int, answers: bool) -> Evaluation:
        report = evaluate_perplexity(
            self._routed(mop_logits_fn(self.model, self.cache("test"))), self.test_enc, self.splits.tasks, self.pad_id,
            self.train_cfg.eval_batch_size, self.device, progress=self.rt.progress and self.rt.is_main,
        ).to_dict()
        record: dict = {"stage": f"{label}_eval", "step": step, "eval_ppl": report["overall"]["ppl"]}
        record.update({f"eval_ppl/{t}": s["ppl"] for t, s in report["per_task"].items()})
        out = Evaluation(step=step, ppl=report)
        if answers and self.train_cfg.generates:
            out.generation = self.answer_metrics()
            record.update({f"eval_{k}": v for k, v in out.generation["overall"].items() if k != "examples"})
        if self.model.config.use_gate and self.model.stage == "mop" and not self._by_task:
            out.gate = record["gate"] = self.gate_matrix()
            self.rt.logger.figure(f"{label}/gate", gate_heatmap_figure(out.gate, self.splits.tasks, f"{label} step {step}"), step)
        self.rt.logger.log(record)
        return out

    @cached_property
    def _answer_inputs(self) -> tuple[list[Encoded], set[str]]:
        """The scored test prompts (prompt-only) and the label tasks: computed once, for every evaluation."""
        return self.tokenizer.encode_all(self.test_examples, prompt_only=True), label_tasks(self.splits.train)

    def answer_metrics(self) -> dict:
        """ROUGE-L (and exact match on label tasks) of greedy answers to the scored test prompts."""
        prompts, labels = self._answer_inputs
        return answer_metrics(self._routed(greedy_fn(self.model.base, self.model)), prompts, self.test_examples, labels,
                              self.model.base.tokenizer, self.train_cfg.eval_max_new_tokens,
                              self.train_cfg.eval_batch_size, self.device, progress=self.rt.progress and self.rt.is_main)

    @property
    def _by_task(self) -> bool:
        """Whether the method training now routes by the task label (the oracle control)."""
        return self.method is not None and self.method.routes_by_task

    def _routed(self, fn: Callable[..., T]) -> Callable[..., T]:
        """`fn` (a LogitsFn, whose batch carries the task ids, or a GenerateFn, whose last argument is them)
        routing each input to its task's expert while the method training now routes by task; else `fn`."""
        if not self._by_task:
            return fn

        def routed(*args):
            task_ids = args[0]["task_ids"] if isinstance(args[0], dict) else args[-1]  # LogitsFn / GenerateFn
            with self.model.routed_by_task(task_ids.to(self.device)):
                return fn(*args)

        return routed

    @torch.no_grad()
    def gate_matrix(self) -> list[list[float]]:
        """(tasks x experts) mean gate weights on the test set; gate inputs from the prefix cache if enabled."""
        cache = self.cache("test")
        if cache is None:
            return gate_matrix(self.model, self.test_enc, len(self.splits.tasks), self.train_cfg.eval_batch_size, self.pad_id)
        weights = self.model.gate(cache.gate_inputs(range(len(self.test_enc)), self.device))
        return weights_by_task(weights, torch.tensor([e.task_id for e in self.test_enc]), len(self.splits.tasks))

    def shared_stages(self, gate: bool) -> RunResult:
        """Recovery, the input-prompts-only evaluation, and (`gate`) gate pretraining: what every method shares."""
        recovery = self.recovery()
        self.model.set_stage("recovery")
        input_prompts_only = self.evaluate("input_prompts_only", 0)
        self.model.set_stage("mop")
        return RunResult(tasks=self.splits.tasks, input_prompts_only=input_prompts_only, recovery=recovery,
                         gate_pretrain=self.gate_pretraining() if gate else None,
                         settings={"mop": self.model.config.to_dict(), "train": self.train_cfg.to_dict()},
                         base=self.model.base.provenance, versions=versions())


def run_methods(pipe: Pipeline, methods: Sequence[str]) -> RunResult:
    """Shared stages once, then each method from the same shared state. Writes results.json/.md and figures."""
    by_task = [m for m in methods if METHODS[m].routes_by_task]
    if by_task and pipe.model.config.num_experts < len(pipe.splits.tasks):
        raise ConfigError(f"method {by_task[0]} routes each task to its own expert: it needs num_experts >= the "
                          f"{len(pipe.splits.tasks)} tasks, got {pipe.model.config.num_experts}")
    untrained_gate = {k: v for k, v in trainable_state(pipe.model).items() if k.startswith("gate.")}  # as initialised
    result = pipe.shared_stages(gate=any(METHODS[m].uses_gate for m in methods))
    shared = trainable_state(pipe.model)
    for name in methods:
        load_trainable_state(pipe.model, shared | (untrained_gate if METHODS[name].gate_start == "random" else {}))
        result.methods[name] = pipe.train(name)
    if pipe.rt.is_main:
        write_run_report(pipe.run_dir, result, methods)
    return result
