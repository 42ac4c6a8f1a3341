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
from mops.evaluation import base_logits_fn, evaluate_perplexity
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
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the results JSON here."),
    as_json: bool = JsonOpt,
) -> None:
    """Perplexity on response tokens, per task and overall (of the base model, or base + --adapter)."""
    if split not in ("test", "train"):
        raise typer.BadParameter("use test or train", param_hint="--split")
    m, d = ModelConfig(**settings["model"]), DataConfig(**settings["data"])
    splits = load_splits(d.data, d.tasks, d.total, seed=seed, skip_invalid=d.skip_invalid)
    examples = splits.test if split == "test" else splits.train
    if limit_per_task is not None:
        examples = first_per_task(examples, limit_per_task)
    t0 = time.perf_counter()
    base = load_base_for(m.model, m.compress, adapter, d.data, seed, dtype=m.dtype, device=m.device)
    load_s = time.perf_counter() - t0
    encoded = Tokenizer(base.tokenizer, splits.tasks, d.max_length, d.template).encode_all(examples)
    logits_fn = base_logits_fn(base.model)
    if adapter is not None:
        logits_fn = mop_logits_fn(MoPModel.from_pretrained(base, adapter))
    t0 = time.perf_counter()
    report = evaluate_perplexity(
        logits_fn, encoded, splits.tasks, base.tokenizer.pad_token_id, batch_size, base.model.device,
        progress=not as_json,
    )
    payload = {
        **m.to_dict(), **d.to_dict(), "compression": base.compression, "adapter": str(adapter) if adapter else None,
        "split": split, "examples": len(encoded), "seed": seed, "load_seconds": round(load_s, 2),
        "eval_seconds": round(time.perf_counter() - t0, 2), "base": base.provenance, "versions": versions(),
        **report.to_dict(),
    }
    if output:
        write_json(output, payload)
    if as_json:
        emit_json(payload)
    else:
        console.print(rich_table(f"{m.model} on {d.data} ({split})", ["task", "tokens", "NLL", "PPL"], ppl_rows(payload)))
