"""The paper's pipeline: (1) P^1 recovery, (2) gate pretraining, (3) baseline and/or MoPs training.

Each finished stage stores its adapter state and result under ``run_dir/stages/<name>``; a re-run with the
same run folder skips finished stages and resumes the running one from its last checkpoint. Baseline and
MoPs start from the same stored shared state (same P^1, same initial experts) and see the same batches.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file

from mops.data import DataSplits, Encoded, Tokenizer
from mops.data.batching import collate
from mops.errors import ConfigError
from mops.data.selection import first_per_task
from mops.evaluation.gating import gate_matrix, weights_by_task
from mops.evaluation.perplexity import evaluate_perplexity
from mops.reports.figures import gate_heatmap_figure, loss_curves, save_gate_heatmap
from mops.reports.tables import markdown_table
from mops.paths import atomic_folder, cache_dir
from mops.progress import console
from mops.provenance import versions
from mops.training.config import TrainConfig
from mops.training.gate_pretraining import pretrain_gate
from mops.training.loop import Runtime, mop_param_groups, train_steps
from mops.training.seeds import relative_gain, task_ppl
from mops.tuners.mops.model import MoPModel
from mops.tuners.peft_baselines import PEFT_METHODS, attach
from mops.tuners.mops.prefix_cache import PrefixCache, mop_logits_fn, open_prefix_cache

PROMPT_METHODS = ("baseline", "mops")
LORA_MOPS = "lora_mops"  # MoPs trained on top of the run's (frozen) LoRA adapter
METHODS = (*PROMPT_METHODS, *PEFT_METHODS, LORA_MOPS)

# Settings that cannot change a stage's outcome; every other MoPConfig/TrainConfig field is part of its key.
_GATE_ONLY = {"gate_lr", "gate_balance", "gate_mode", "gate_strength", "learn_gate_strength", "gate_noise", "use_gate",
              "gate_input"}
_GATE_PRETRAIN = {"gate_pretrain_steps", "gate_pretrain_lr", "gate_pretrain_examples", "gate_pretrain_batch_size",
                  "gate_pretrain_smoothing"}
_NEVER = {"checkpoint_every"}
_PEFT = {"lora_lr", "ia3_lr", "lora_r", "lora_alpha", "lora_dropout", "peft_targets"}
_IRRELEVANT = {
    "recovery": _GATE_ONLY | _GATE_PRETRAIN | _NEVER | _PEFT | {"steps", "lr", "baseline_lr", "eval_every"},
    "gate_pretrain": _GATE_ONLY | _NEVER | _PEFT | {"steps", "lr", "baseline_lr", "eval_every"},
    "baseline": _GATE_ONLY | _GATE_PRETRAIN | _NEVER | _PEFT | {"lr", "baseline_lr"},
    "mops": _NEVER | _PEFT | {"baseline_lr"},
    "lora": _GATE_ONLY | _GATE_PRETRAIN | _NEVER | {"baseline_lr", "ia3_lr"},
    "ia3": _GATE_ONLY | _GATE_PRETRAIN | _NEVER | {"baseline_lr", "lora_lr", "lora_r", "lora_alpha", "lora_dropout"},
    LORA_MOPS: _NEVER | {"baseline_lr", "ia3_lr"},
}


KEY_FILE = "key"  # in a stage folder and its checkpoint folder: the stage key they were made under


def _read_key(folder: Path) -> str | None:
    file = folder / KEY_FILE
    return file.read_text().strip() if file.is_file() else None


def _token_digest(encoded: Sequence[Encoded]) -> str:
    digest = hashlib.sha256()
    for enc in encoded:
        digest.update(json.dumps([enc.input_ids, enc.labels, enc.task_id]).encode())
    return digest.hexdigest()


@dataclass
class Experiment:
    """A model with its adapter, the data encoded once, and where results go."""

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
        self.test_enc = tok.encode_all(test)
        self.pad_id = self.model.base.tokenizer.pad_token_id
        self.device = self.rt.accelerator.device
        self.data_digest = _token_digest(self.train_enc) + _token_digest(self.test_enc)
        self.peft = None  # the PeftModel wrapper while a LoRA / IA3 method trains

    def stage_key(self, name: str) -> str:
        """Digest of everything stage `name` depends on: base model, data tokens, and its settings.

        Finished stages are stored under MOPS_HOME/stages/<name>/<key>, so any run with the same settings
        (another experiment's baseline, a re-run of a grid) reuses them instead of training again.
        """
        settings = {**self.model.config.to_dict(), **self.train_cfg.to_dict()}
        if name == "baseline":
            settings["baseline_prompt_lr"] = self.train_cfg.method_lr("baseline")
        settings = {k: v for k, v in settings.items() if k not in _IRRELEVANT[name]}
        payload = {"stage": name, "base": self.model.base.identity, "base_path": str(self.model.base.path),
                   "fingerprint": self.model.base.fingerprint,
                   "data": self.data_digest, "max_length": self.max_length, "template": self.template,
                   "settings": settings}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def cache(self, split: str) -> PrefixCache | None:
        """The prefix cache of `split` (train/test) in the MoP stage when enabled, else None.

        The cache is keyed by P^1 among others, so opening it after recovery finds the right one.
        """
        if not (self.train_cfg.cache_activations and self.model.stage == "mop") or self.peft is not None:
            return None
        encoded = self.train_enc if split == "train" else self.test_enc
        return open_prefix_cache(self.model, encoded, self.pad_id, self.train_cfg.cache_dtype)

    # ---- stages ---------------------------------------------------------------------------------------
    def cached_stage(self, name: str, run: Callable[[], dict]) -> dict:
        """Run a stage once; afterwards load its stored adapter state and result instead.

        The run folder's stage (and its checkpoints) is reused only if its key file matches this stage's key:
        a stage finished or interrupted under other settings is trained again, never relabelled.
        """
        key = self.stage_key(name)
        folder = self.run_dir / "stages" / name
        checkpoints = self.run_dir / "checkpoints" / name
        stored = cache_dir("stages") / name / key
        if self.rt.is_main:
            for path in (folder, checkpoints):
                if path.is_dir() and _read_key(path) != key:
                    if any(p.name != KEY_FILE for p in path.iterdir()):
                        console.print(f"[yellow]{path} was made with other settings: stage {name} starts again")
                    shutil.rmtree(path)
            if not (folder / "result.json").is_file() and (stored / "result.json").is_file():
                shutil.copytree(stored, folder, dirs_exist_ok=True)  # the same stage of an earlier run
                (folder / KEY_FILE).write_text(key)
        self.rt.accelerator.wait_for_everyone()
        if (folder / "result.json").is_file():
            self.model.load_adapter_state(load_file(str(folder / "adapter.safetensors"), device=str(self.device)))
            return json.loads((folder / "result.json").read_text())
        if self.rt.is_main:
            checkpoints.mkdir(parents=True, exist_ok=True)
            (checkpoints / KEY_FILE).write_text(key)
        t0 = time.perf_counter()
        result = {**run(), "seconds": round(time.perf_counter() - t0, 1)}
        if self.rt.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            save_file(self.model.adapter_state(), str(folder / "adapter.safetensors"))
            (folder / KEY_FILE).write_text(key)
            (folder / "result.json").write_text(json.dumps(result, indent=2))  # last: marks the stage finished
            if not stored.is_dir():
                with atomic_folder(stored, "result.json") as tmp:
                    shutil.copytree(folder, tmp, dirs_exist_ok=True)
        self.rt.accelerator.wait_for_everyone()
        return result

    def recovery(self) -> dict:
        """Stage 1: train P^1 as plain input prompt tuning, freeze it, start the experts from it."""

        def run() -> dict:
            losses: list[float] = []
            cfg = self.train_cfg
            if cfg.recovery_steps and self.model.config.num_input_prompts:
                params = self.model.set_stage("recovery")
                losses = train_steps(
                    self.model, "recovery", [{"params": params, "lr": cfg.recovery_lr}], self.train_enc,
                    cfg.recovery_steps, cfg, self.rt, self.pad_id, self.run_dir / "checkpoints" / "recovery",
                )
            self.model.set_stage("mop")
            self.model.init_expert_prompts(self.expert_examples() if self.model.config.prompt_init == "task_examples" else None)
            return {"losses": losses}

        result = self.cached_stage("recovery", run)
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
        """Stage 2: the gate learns task -> expert on instructions only."""
        cfg = self.train_cfg
        n = cfg.gate_pretrain_examples
        prompts = self.tokenizer.encode_all(
            first_per_task(self.splits.train, max(1, n // len(self.splits.tasks))),
            prompt_only=True,
        )
        return self.cached_stage("gate_pretrain", lambda: pretrain_gate(self.model, prompts, cfg, self.rt, self.pad_id)
                                 if cfg.gate_pretrain_steps else {})

    def train(self, method: str) -> dict:
        """Stage 3: experts (+ gate for MoPs), or a LoRA / IA3 adapter with the slots frozen at P^1, for
        `train_cfg.steps`; evaluates along the way and at the end."""
        if method in PEFT_METHODS or method == LORA_MOPS:
            self.peft = attach(self.model.lm, "lora" if method == LORA_MOPS else method, self.train_cfg)
            try:
                if method == LORA_MOPS:
                    self._load_frozen_lora()
                return self._train(method)
            finally:
                if self.rt.is_main:  # lora_mops: the MoPs adapter is <method>/adapter, its LoRA beside it
                    self.peft.save_pretrained(str(self.run_dir / method / ("lora_adapter" if method == LORA_MOPS
                                                                           else "adapter")))
                self.peft.unload()
                self.peft = None
        return self._train(method)

    def _load_frozen_lora(self) -> None:
        """MoPs on a LoRA-tuned model (paper Table 8): this run's finished LoRA stage, frozen."""
        stage = self.run_dir / "stages" / "lora" / "adapter.safetensors"
        if not stage.is_file():
            raise ConfigError(f"method {LORA_MOPS} needs the LoRA stage first: put lora before it in --method")
        state = load_file(str(stage), device=str(self.device))
        params = dict(self.model.lm.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                if key.startswith("lm."):
                    params[key.removeprefix("lm.")].copy_(value)
        self.model.lm.requires_grad_(False)
        self.model.lm.eval()  # frozen: no LoRA dropout either

    def _train(self, method: str) -> dict:
        cfg = self.train_cfg
        self.model.config.use_gate = method in ("mops", LORA_MOPS)
        self.model.set_stage("mop")
        if method in PEFT_METHODS:
            self.model.expert_prompts.requires_grad_(False)
            self.model.lm.eval()
            for name, module in self.model.lm.named_modules():
                if name.endswith("lora_dropout") or ".lora_dropout." in name:
                    module.train()  # the adapter's own dropout, while training only
            groups = [{"params": [p for p in self.model.lm.parameters() if p.requires_grad], "lr": cfg.method_lr(method)}]
        else:
            groups = mop_param_groups(self.model, cfg, method)
        evals: list[dict] = []

        def run() -> dict:
            losses = train_steps(
                self.model, method, groups, self.train_enc, cfg.steps, cfg, self.rt, self.pad_id,
                self.run_dir / "checkpoints" / method, on_eval=lambda step: evals.append(self.evaluate(method, step)),
                logits_fn=mop_logits_fn(self.model, self.cache("train")),
            )
            return {"losses": losses, "evals": evals, "final": self.evaluate(method, cfg.steps),
                    "trainable_parameters": self.model.trainable_parameters()}

        result = self.cached_stage(method, run)
        if self.rt.is_main and method in (*PROMPT_METHODS, LORA_MOPS):
            self.model.save_pretrained(self.run_dir / method / "adapter")
        return result

    # ---- evaluation -----------------------------------------------------------------------------------
    def evaluate(self, label: str, step: int) -> dict:
        """Per-task test PPL, plus the (task x expert) gate matrix when the gate is on (in eval mode: no dropout)."""
        training = [m for m in self.model.lm.modules() if m.training]
        self.model.lm.eval()
        try:
            return self._evaluate(label, step)
        finally:
            for module in training:
                module.train()

    def _evaluate(self, label: str, step: int) -> dict:
        report = evaluate_perplexity(
            mop_logits_fn(self.model, self.cache("test")), self.test_enc, self.splits.tasks, self.pad_id, self.train_cfg.eval_batch_size, self.device,
            progress=self.rt.progress and self.rt.is_main,
        ).to_dict()
        record: dict = {"stage": f"{label}_eval", "step": step, "eval_ppl": report["overall"]["ppl"]}
        record.update({f"eval_ppl/{t}": s["ppl"] for t, s in report["per_task"].items()})
        out = {"step": step, "ppl": report}
        if self.model.config.use_gate and self.model.stage == "mop":
            out["gate"] = record["gate"] = self.gate_matrix()
            self.rt.logger.figure(f"{label}/gate", gate_heatmap_figure(out["gate"], self.splits.tasks, f"{label} step {step}"), step)
        self.rt.logger.log(record)
        return out

    @torch.no_grad()
    def gate_matrix(self) -> list[list[float]]:
        """(tasks x experts) mean gate weights on the test set; gate inputs from the prefix cache if enabled."""
        cache = self.cache("test")
        if cache is None:
            return gate_matrix(self.model, self.test_enc, len(self.splits.tasks), self.train_cfg.eval_batch_size, self.pad_id)
        weights = self.model.gate(cache.gate_inputs(range(len(self.test_enc)), self.device))
        return weights_by_task(weights, torch.tensor([e.task_id for e in self.test_enc]), len(self.splits.tasks))


def run_methods(exp: Experiment, methods: Sequence[str]) -> dict:
    """Shared stages once, then each method from the same shared state. Writes results.json/.md and figures."""
    results: dict = {"tasks": exp.splits.tasks, "settings": {"mop": exp.model.config.to_dict(),
                                                            "train": exp.train_cfg.to_dict()},
                     "base": exp.model.base.provenance, "versions": versions()}
    results["recovery"] = exp.recovery()
    exp.model.set_stage("recovery")
    results["input_prompts_only"] = exp.evaluate("input_prompts_only", 0)
    exp.model.set_stage("mop")
    if "mops" in methods:
        exp.model.config.use_gate = True
        results["gate_pretrain"] = exp.gate_pretraining()
        results["gate_pretrain"]["gate"] = exp.gate_matrix()
    shared = exp.model.adapter_state()
    for method in methods:
        exp.model.load_adapter_state(shared)
        results[method] = exp.train(method)
    if exp.rt.is_main:
        write_reports(exp.run_dir, results, methods)
    return results


def tasktask_ppl(evaluation: dict, task: str) -> float:
    """PPL of one task (or "overall") from an evaluation record {"ppl": {"overall", "per_task"}}."""
    report = evaluation["ppl"]
    return report["overall"]["ppl"] if task == "overall" else report["per_task"][task]["ppl"]


def comparison_rows(results: dict, methods: Sequence[str]) -> tuple[list[str], list[list[object]]]:
    """Per-task PPL table: frozen input prompts, each method, and MoPs' gain over the other method."""
    headers = ["task", "input prompts only", *methods]
    baseline = next((m for m in methods if m != "mops"), None)  # baseline (centralised) or fedprompt
    both = baseline is not None and "mops" in methods
    if both:
        headers.append("MoPs gain")
    rows = []
    for task in [*results["tasks"], "overall"]:
        row: list[object] = [task, task_ppl(results["input_prompts_only"], task)]
        row += [task_ppl(results[m]["final"], task) for m in methods]
        if both:
            gain = relative_gain(task_ppl(results[baseline]["final"], task), task_ppl(results["mops"]["final"], task))
            row.append(f"{gain:+.1f}%")
        rows.append(row)
    return headers, rows


def write_reports(run_dir: Path, results: dict, methods: Sequence[str]) -> None:
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    headers, rows = comparison_rows(results, methods)
    text = "Test perplexity on response tokens (lower is better). Gain = (baseline - MoPs) / baseline.\n\n"
    (run_dir / "results.md").write_text(text + markdown_table(headers, rows))
    tasks = results["tasks"]
    if "gate_pretrain" in results and "gate" in results["gate_pretrain"]:
        save_gate_heatmap(results["gate_pretrain"]["gate"], tasks, "gate after pretraining", run_dir / "gate_pretrained.png")
    if "mops" in results:
        save_gate_heatmap(results["mops"]["final"]["gate"], tasks, "gate after MoPs training", run_dir / "gate_final.png")
    loss_curves({m: results[m]["losses"] for m in methods}, "training loss", run_dir / "loss.png")
