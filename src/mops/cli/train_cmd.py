"""`mops train` and `mops demo`: the paper's pipeline for baseline and/or MoPs from the same frozen parts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mops.cli.common import (
    CompressOpt, DataOpt, DeviceOpt, DtypeOpt, JsonOpt, MaxLenOpt, ModelOpt, SkipOpt, TasksOpt, TemplateOpt,
    TotalOpt, emit_json,
)
from mops.errors import ConfigError
from mops.training.overrides import parse_overrides
from mops.training.runs import RunRequest, execute


def parse_methods(text: str) -> list[str]:
    from mops.training import METHODS

    methods = ["baseline", "mops"] if text == "both" else [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods or len(set(methods)) != len(methods):
        raise ConfigError(f"--method must be both or a comma-separated list of {', '.join(METHODS)}, got {text!r}")
    return methods


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must be distinct integers separated by commas, got {text!r}")
    return seeds


def train_command(
    model: str = ModelOpt,
    compress: Optional[str] = CompressOpt,
    data: str = DataOpt,
    tasks: Optional[str] = TasksOpt,
    total: int = TotalOpt,
    method: str = typer.Option("both", "--method", help="both (= baseline,mops) or a list of mops, baseline (prompt "
                                                       "tuning at the same layer, no gate), lora, ia3 (peft)."),
    output: Path = typer.Option(Path("runs/train"), "--output", "-o", help="Run folder; re-running the same command "
                                "resumes it (other settings are refused: see --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run in --output even if its settings differ."),
    num_experts: int = typer.Option(7, "--num-experts", help="Expert groups E (paper: 7)."),
    prompts_per_expert: Optional[int] = typer.Option(None, "--prompts-per-expert", help="Prompts per expert (default: "
                                                     "70 with merge routing, 10 with attention routing)."),
    routing: str = typer.Option("merge", "--routing", help="merge (each input's slots = gate-weighted mean of "
                                                           "the experts) or attention (the paper's)."),
    injection_layer: Optional[int] = typer.Option(None, "--injection-layer", help="Layer L_int (default: L/3)."),
    input_prompts: bool = typer.Option(True, "--input-prompts/--no-input-prompts", help="Frozen recovery prompts P^1."),
    gate_mode: str = typer.Option("scaled", "--gate-mode", help="scaled (E x softmax) or softmax (paper)."),
    gate_hidden_size: int = typer.Option(256, "--gate-hidden-size"),
    prompt_init: str = typer.Option("input_prompts", "--prompt-init", help="input_prompts, task_examples, vocab, random or text."),
    steps: int = typer.Option(200, "--steps", help="Main-stage optimiser steps."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Global batch size."),
    grad_accum: int = typer.Option(1, "--grad-accum"),
    lr: float = typer.Option(1e-2, "--lr", help="Prompt learning rate (paper: 1e-3)."),
    gate_lr: float = typer.Option(1e-4, "--gate-lr", help="Gate learning rate."),
    recovery_steps: int = typer.Option(20, "--recovery-steps", help="P^1 recovery steps (paper: 20)."),
    recovery_lr: float = typer.Option(1e-3, "--recovery-lr"),
    gate_pretrain_steps: int = typer.Option(300, "--gate-pretrain-steps"),
    gate_pretrain_examples: int = typer.Option(1000, "--gate-pretrain-examples"),
    eval_every: int = typer.Option(0, "--eval-every", help="Evaluate every N steps (0: at the end)."),
    eval_limit_per_task: Optional[int] = typer.Option(None, "--eval-limit-per-task"),
    eval_batch_size: int = typer.Option(8, "--eval-batch-size"),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every"),
    max_grad_norm: Optional[float] = typer.Option(None, "--max-grad-norm"),
    group_by_length: bool = typer.Option(True, "--group-by-length/--random-batches", help="Batch similar lengths together."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse the frozen layers' activations (exact)."),
    cache_dtype: Optional[str] = typer.Option(None, "--cache-dtype", help="float32, bfloat16 or float16 (default: the model's)."),
    max_length: int = MaxLenOpt,
    template: str = TemplateOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
    seeds: str = typer.Option("0", "--seeds", "--seed", help="Training seed, or several (0,1,2) for a paired comparison "
                                                          "over seeds (mean +- std of MoPs' gain)."),
    skip_invalid: bool = SkipOpt,
    overrides: list[str] = typer.Option([], "--set", help="Any MoPConfig/TrainConfig field, e.g. --set gate_strength=0.5 "
                                                         "--set gate_balance=0.01 (repeatable; see the docs for all)."),
    experiment_log: Optional[Path] = typer.Option(None, "--experiment-log", help="Research log folder: add this run "
                                                  "(named after -o) to its log.jsonl and index.md."),
    note: str = typer.Option("", "--note", help="What this run tries (the log's description)."),
    as_json: bool = JsonOpt,
) -> None:
    """Recovery prompts -> gate pretraining -> baseline and/or MoPs; per-task PPL table, heatmaps, adapters."""
    set_mop, set_train = parse_overrides(overrides)
    req = RunRequest(
        model=model, data=data, tasks=tasks, total=total, methods=parse_methods(method), output=output,
        mop=dict(num_experts=num_experts, prompts_per_expert=prompts_per_expert, routing=routing,
                 injection_layer=injection_layer,
                 num_input_prompts=None if input_prompts else 0, gate_mode=gate_mode,
                 gate_hidden_size=gate_hidden_size, prompt_init=prompt_init) | set_mop,
        train=dict(steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, gate_lr=gate_lr,
                   recovery_steps=recovery_steps, recovery_lr=recovery_lr, gate_pretrain_steps=gate_pretrain_steps,
                   gate_pretrain_examples=gate_pretrain_examples, eval_every=eval_every,
                   eval_limit_per_task=eval_limit_per_task, eval_batch_size=eval_batch_size,
                   checkpoint_every=checkpoint_every, max_grad_norm=max_grad_norm, cache_activations=cache,
                   group_by_length=group_by_length, cache_dtype=cache_dtype) | set_train,
        max_length=max_length, template=template, dtype=dtype, device=device, seeds=parse_seeds(seeds),
        skip_invalid=skip_invalid, compress=compress, progress=not as_json, experiment_log=experiment_log, note=note,
        overwrite=overwrite,
    )
    results = execute(req)
    if as_json:
        if len(req.seeds) > 1:
            emit_json({"summary": results["summary"], "run_dir": str(output)})
        else:
            emit_json({m: results[m]["final"]["ppl"] for m in req.methods} | {"run_dir": str(output)})


def demo_command(
    output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="Run folder (re-running resumes)."),
    model: str = ModelOpt,
    data: str = DataOpt,
    steps: int = typer.Option(30, "--steps", help="Steps for the baseline and for MoPs each."),
    device: str = DeviceOpt,
) -> None:
    """The paper's comparison at CPU size (about 5 minutes on 2 cores with SmolLM2-135M).

    Recovery prompts P^1, gate pretraining, then prompt tuning at layer 10 (70 prompts) and MoPs (7 experts,
    70 slots, merge routing) for the same steps on the same batches; prints the per-task table, writes the gate
    heatmaps.
    """
    req = RunRequest(
        model=model, data=data, tasks=None, total=5000, methods=["baseline", "mops"], output=output,
        mop=dict(num_experts=7),
        train=dict(steps=steps, batch_size=4, lr=1e-2, gate_lr=1e-4, recovery_steps=5, recovery_lr=1e-2,
                   gate_pretrain_steps=200, gate_pretrain_examples=140, eval_limit_per_task=10,
                   checkpoint_every=10),
        max_length=128, template="plain", dtype="auto", device=device, seeds=[0], skip_invalid=False,
    )
    execute(req)
