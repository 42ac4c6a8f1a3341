"""`mops eval`: response-token perplexity of a base model (or base + adapter) per task."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from mops.cli.common import JsonOpt, console, emit_json, load_base_for, write_json
from mops.cli.options import Section, config_command
from mops.data import Tokenizer, load_splits
from mops.data.config import DataConfig
from mops.data.selection import first_per_task
from mops.errors import ConfigError
from mops.evaluation import base_logits_fn, evaluate_perplexity
from mops.evaluation.generation import METRICS, answer_metrics, greedy_fn, label_tasks
from mops.models.config import ModelConfig
from mops.provenance import versions
from mops.reports.tables import ppl_rows, rich_table
from mops.tuners.mops.model import MoPModel
from mops.tuners.mops.prefix_cache import mop_logits_fn


@config_command(Section("model", ModelConfig), Section("data", DataConfig))
def eval_command(
    settings: dict,
    adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="Score base + this MoPs adapter folder."),
    split: str = typer.Option("test", "--split", help="test or train."),
    limit_per_task: Optional[int] = typer.Option(None, "--limit-per-task", min=1,
                                                 help="Score at most this many examples per task."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
    seed: int = typer.Option(0, "--seed", help="Seed of the selection and split (and of a compressed base's "
                                               "calibration sample)."),
    metrics: str = typer.Option("ppl", "--metrics", help=f"Comma-separated, of {', '.join(METRICS)}: perplexity "
                                "of the references, and ROUGE-L / exact match (on label tasks) of greedy answers."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Answer length for rougeL / exact_match."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the results JSON here."),
    as_json: bool = JsonOpt,
) -> None:
    """Perplexity on response tokens and (--metrics) ROUGE-L / exact match of greedy answers, per task and
    overall, of the base model or base + --adapter."""
    if split not in ("test", "train"):
        raise typer.BadParameter("use test or train", param_hint="--split")
    wanted = [m.strip() for m in metrics.split(",") if m.strip()]
    if not wanted or set(wanted) - set(METRICS):
        raise ConfigError(f"--metrics must be a comma-separated list of {', '.join(METRICS)}, got {metrics!r}")
    m, d = ModelConfig(**settings["model"]), DataConfig(**settings["data"])
    splits = load_splits(d.data, d.tasks, d.total, seed=seed, skip_invalid=d.skip_invalid)
    examples = splits.test if split == "test" else splits.train
    if limit_per_task is not None:
        examples = first_per_task(examples, limit_per_task)
    t0 = time.perf_counter()
    base = load_base_for(m.model, m.compress, adapter, d.data, seed, dtype=m.dtype, device=m.device)
    load_s = time.perf_counter() - t0
    encoded = Tokenizer(base.tokenizer, splits.tasks, d.max_length, d.template).encode_all(examples)
    mop = MoPModel.from_pretrained(base, adapter) if adapter is not None else None
    t0 = time.perf_counter()
    report = evaluate_perplexity(
        mop_logits_fn(mop) if mop is not None else base_logits_fn(base.model), encoded, splits.tasks,
        base.tokenizer.pad_token_id, batch_size, base.model.device, progress=not as_json,
    )
    payload = {
        **m.to_dict(), **d.to_dict(), "compression": base.compression, "adapter": str(adapter) if adapter else None,
        "split": split, "examples": len(encoded), "seed": seed, "load_seconds": round(load_s, 2),
        "eval_seconds": round(time.perf_counter() - t0, 2), "base": base.provenance, "versions": versions(),
        "metrics": wanted, **report.to_dict(),
    }
    if {"rougeL", "exact_match"} & set(wanted):
        prompts = Tokenizer(base.tokenizer, splits.tasks, d.max_length, d.template).encode_all(examples, prompt_only=True)
        payload["generation"] = answer_metrics(greedy_fn(base, mop), prompts, examples, label_tasks(splits.train),
                                               base.tokenizer, max_new_tokens, batch_size, base.model.device,
                                               progress=not as_json)
    if output:
        write_json(output, payload)
    if as_json:
        emit_json(payload)
    else:
        headers, rows = ["task", "tokens", "NLL", "PPL"], ppl_rows(payload)
        if "generation" in payload:
            gen = payload["generation"]
            headers += ["ROUGE-L", "exact match"]
            for row in rows:
                score = gen["overall"] if row[0] == "overall" else gen["per_task"][row[0]]
                row += [score["rougeL"], "-" if score["exact_match"] is None else score["exact_match"]]
        console.print(rich_table(f"{m.model} on {d.data} ({split})", headers, rows))
