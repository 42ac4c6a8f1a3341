"""`mops eval`: response-token perplexity of a base model (or base + adapter) per task."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from mops.cli.common import (
    CompressOpt, DataOpt, DeviceOpt, DtypeOpt, JsonOpt, MaxLenOpt, ModelOpt, SeedOpt, SkipOpt, TasksOpt, TemplateOpt,
    TotalOpt, console, emit_json, write_json,
)
from mops.compression.config import compression_from
from mops.data import Tokenizer, load_splits
from mops.data.selection import first_per_task
from mops.evaluation import base_logits_fn, evaluate_perplexity
from mops.models import load_base_model
from mops.provenance import versions
from mops.tuners.mops.model import MoPModel
from mops.tuners.mops.prefix_cache import mop_logits_fn
from mops.reports.tables import ppl_rows, rich_table


def eval_command(
    model: str = ModelOpt,
    adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="Score base + this MoPs adapter folder."),
    compress: Optional[str] = CompressOpt,
    data: str = DataOpt,
    tasks: Optional[str] = TasksOpt,
    total: int = TotalOpt,
    split: str = typer.Option("test", "--split", help="test or train."),
    limit_per_task: Optional[int] = typer.Option(None, "--limit-per-task", min=1,
                                                 help="Score at most this many examples per task."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1),
    max_length: int = MaxLenOpt,
    template: str = TemplateOpt,
    dtype: str = DtypeOpt,
    device: str = DeviceOpt,
    seed: int = SeedOpt,
    skip_invalid: bool = SkipOpt,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the results JSON here."),
    as_json: bool = JsonOpt,
) -> None:
    """Perplexity on response tokens, per task and overall (of the base model, or base + --adapter)."""
    if split not in ("test", "train"):
        raise typer.BadParameter("use test or train", param_hint="--split")
    splits = load_splits(data, tasks, total, seed=seed, skip_invalid=skip_invalid)
    examples = splits.test if split == "test" else splits.train
    if limit_per_task is not None:
        examples = first_per_task(examples, limit_per_task)
    t0 = time.perf_counter()
    base = load_base_model(model, dtype=dtype, device=device, compression=compression_from(compress, data, seed))
    load_s = time.perf_counter() - t0
    encoded = Tokenizer(base.tokenizer, splits.tasks, max_length, template).encode_all(examples)
    logits_fn = base_logits_fn(base.model)
    if adapter is not None:
        logits_fn = mop_logits_fn(MoPModel.from_pretrained(base, adapter))
    t0 = time.perf_counter()
    report = evaluate_perplexity(
        logits_fn, encoded, splits.tasks, base.tokenizer.pad_token_id, batch_size, base.model.device,
        progress=not as_json,
    )
    payload = {
        "model": model, "compression": base.compression, "adapter": str(adapter) if adapter else None, "data": data, "split": split, "examples": len(encoded), "max_length": max_length,
        "template": template, "seed": seed, "load_seconds": round(load_s, 2),
        "eval_seconds": round(time.perf_counter() - t0, 2), "base": base.provenance, "versions": versions(),
        **report.to_dict(),
    }
    if output:
        write_json(output, payload)
    if as_json:
        emit_json(payload)
    else:
        console.print(rich_table(f"{model} on {data} ({split})", ["task", "tokens", "NLL", "PPL"], ppl_rows(payload)))
