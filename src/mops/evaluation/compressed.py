"""Test-split perplexity before and after compression, stored in the reports (computed once per setting)."""

from __future__ import annotations

import json
from pathlib import Path

from mops.compression.compress import CompressedModel, base_key
from mops.models.report import write_compression_report
from mops.data import Tokenizer, load_splits
from mops.data.selection import first_per_task
from mops.evaluation.perplexity import evaluate_perplexity
from mops.models.logits import base_logits_fn
from mops.models.loading import BaseModel, load_base_model
from mops.paths import cache_dir


def eval_key(data: str, limit_per_task: int | None, max_length: int) -> str:
    """Names one evaluation setting: data, test split (seed 0), examples per task, sequence length."""
    return f"{data}:test:{'all' if limit_per_task is None else limit_per_task}-per-task:len{max_length}"


def _perplexity(base: BaseModel, data: str, limit_per_task: int | None, max_length: int, batch_size: int,
                progress: bool) -> dict:
    splits = load_splits(data, seed=0)
    examples = splits.test if limit_per_task is None else first_per_task(splits.test, limit_per_task)
    encoded = Tokenizer(base.tokenizer, splits.tasks, max_length).encode_all(examples)
    report = evaluate_perplexity(base_logits_fn(base.model), encoded, splits.tasks, base.tokenizer.pad_token_id,
                                 batch_size, base.model.device, progress=progress)
    return {"examples": len(encoded), **report.to_dict()}


def reference_perplexity(base: str, data: str, limit_per_task: int | None = None, max_length: int = 256,
                         batch_size: int = 8, device: str = "auto", progress: bool = False) -> dict:
    """PPL of the UNcompressed base, cached next to its compressed copies."""
    file = cache_dir("compressed") / base_key(base) / "reference_ppl.json"
    cached = json.loads(file.read_text()) if file.is_file() else {}
    key = eval_key(data, limit_per_task, max_length)
    if key not in cached:
        cached[key] = _perplexity(load_base_model(base, device=device), data, limit_per_task, max_length,
                                  batch_size, progress)
        file.write_text(json.dumps(cached, indent=2) + "\n")
    return cached[key]


def evaluate_compressed(compressed: CompressedModel, data: str, limit_per_task: int | None = None,
                        max_length: int = 256, batch_size: int = 8, device: str = "auto",
                        progress: bool = False) -> dict:
    """Add ``ppl[eval_key] = {"before", "after"}`` to the folder's report (once) and return it."""
    key = eval_key(data, limit_per_task, max_length)
    report = compressed.report
    if key not in report.get("ppl", {}):
        before = reference_perplexity(report["base"], data, limit_per_task, max_length, batch_size, device, progress)
        after = _perplexity(load_base_model(str(compressed.path), device=device), data, limit_per_task,
                            max_length, batch_size, progress)
        report.setdefault("ppl", {})[key] = {"before": before, "after": after}
        write_compression_report(Path(compressed.path), report)
    return report["ppl"][key]
