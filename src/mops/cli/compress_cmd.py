"""`mops compress` (one setting) and `mops compress-sweep` (the paper's settings, as a Markdown table)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mops.cli.common import JsonOpt, console, emit_json, write_json
from mops.cli.options import Section, config_command
from mops.compression import CompressionConfig, compress_model
from mops.evaluation.compressed import evaluate_compressed
from mops.data.config import DataConfig
from mops.models.config import ModelConfig
from mops.reports.tables import markdown_table, rich_table

# The paper's pruning settings (unstructured 75/85/90%, N:M = N pruned of every M) and int8 combinations.
PAPER_PRUNING = ("0.75", "0.85", "0.9", "2:4", "4:8", "3:4", "7:8")
PAPER_INT8 = ("int8", "sparsegpt:0.75+int8", "sparsegpt:0.85+int8", "sparsegpt:0.9+int8")

CALIBRATION = ("calib_data", "calib_samples", "calib_length", "calib_seed")
MODEL = Section.only("model", ModelConfig, "model", "device")
EVAL_DATA = Section.only("data", DataConfig, "max_length")  # of the before/after test-split scoring
EvalLimitOpt = typer.Option(None, "--eval-limit-per-task", help="Score at most this many test examples per task (default: all).")
BatchOpt = typer.Option(8, "--batch-size", "-b", help="Evaluation batch size.")

HEADERS = ["setting", "sparsity", "N:M ok", "disk MB", "memory MB", "seconds", "device", "PPL before", "PPL after"]


def _row(report: dict, ppl: dict | None) -> list[object]:
    sp = report["sparsity"]
    nm = "-" if "nm_verified" not in sp else ("yes" if sp["nm_verified"] else f"NO ({sp['nm_violations']})")
    before = ppl["before"]["overall"]["ppl"] if ppl else "-"
    after = ppl["after"]["overall"]["ppl"] if ppl else "-"
    return [report["label"], f"{sp['overall'] * 100:.1f}%", nm, round(report["bytes"]["disk"] / 2**20, 1),
            round(report["bytes"]["memory"] / 2**20, 1), report["seconds"]["total"], report["device"], before, after]


def _run(model: str, cfg: CompressionConfig, evaluate: bool, eval_data: str, limit: int | None, max_length: int,
         batch_size: int, device: str, force: bool, progress: bool) -> tuple[dict, dict | None]:
    compressed = compress_model(model, cfg, device=device, force=force)
    ppl = None
    if evaluate:
        ppl = evaluate_compressed(compressed, eval_data, limit, max_length, batch_size, device, progress)
    return {**compressed.report, "path": str(compressed.path)}, ppl


@config_command(MODEL, Section("compression", CompressionConfig), EVAL_DATA)
def compress_command(
    settings: dict,
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="Test-split PPL before and after."),
    eval_limit: Optional[int] = EvalLimitOpt,
    batch_size: int = BatchOpt,
    force: bool = typer.Option(False, "--force", help="Rebuild even if this setting is cached."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the report JSON here."),
    as_json: bool = JsonOpt,
) -> None:
    """Prune and/or int8-quantize a base model into a cached model folder, and report what it did."""
    cfg = CompressionConfig(**settings["compression"])
    model, device, max_length = settings["model"]["model"], settings["model"]["device"], settings["data"]["max_length"]
    report, ppl = _run(model, cfg, evaluate, cfg.calib_data, eval_limit, max_length, batch_size, device, force,
                       not as_json)
    payload = {**report, "eval": ppl}
    if output:
        write_json(output, payload)
    if as_json:
        emit_json(payload)
        return
    console.print(rich_table(f"{model} compressed", HEADERS, [_row(report, ppl)]))
    console.print(f"model folder: {report['path']}  (use it as --model, or pass --compress {cfg.spec} to train/eval)")


def paper_settings(methods: list[str], with_int8: bool) -> list[str]:
    """Short forms of the paper's settings: every pruning setting per method, then int8 and int8 + pruning."""
    settings = []
    for method in methods:
        settings += [f"{method}:{s}" for s in PAPER_PRUNING]
    return settings + (list(PAPER_INT8) if with_int8 else [])


@config_command(MODEL, Section.only("compression", CompressionConfig, *CALIBRATION), EVAL_DATA)
def sweep_command(
    settings: dict,
    methods: str = typer.Option("sparsegpt,magnitude", "--methods", help="Pruning methods, comma-separated."),
    short_forms: Optional[str] = typer.Option(None, "--settings", help="Instead of the paper's: comma-separated short forms, e.g. sparsegpt:0.5,wanda:2:4+int8,int8."),
    with_int8: bool = typer.Option(True, "--int8/--no-int8", help="Add int8 and int8 + SparseGPT 75/85/90%."),
    eval_limit: Optional[int] = EvalLimitOpt,
    batch_size: int = BatchOpt,
    output: Path = typer.Option(Path("results/compression"), "--output", "-o", help="Folder for table.md and JSON."),
) -> None:
    """Compress with each setting (cached), score test PPL before/after, write table.md + results.json."""
    names = short_forms.split(",") if short_forms else paper_settings([m for m in methods.split(",") if m], with_int8)
    calib = settings["compression"]
    model, device, max_length = settings["model"]["model"], settings["model"]["device"], settings["data"]["max_length"]
    configs = [CompressionConfig.parse(n.strip(), **calib) for n in names]  # all checked before any work
    output.mkdir(parents=True, exist_ok=True)
    results, rows = [], []
    for cfg in configs:
        console.print(f"[bold]{cfg.label}[/bold]")
        report, ppl = _run(model, cfg, True, cfg.calib_data, eval_limit, max_length, batch_size, device, False, True)
        report["sparsity"] = {k: v for k, v in report["sparsity"].items() if k != "matrices"}  # keep JSON short
        results.append({**report, "eval": ppl})
        rows.append(_row(report, ppl))
        write_json(output / "results.json", results)  # after every setting: an interrupted sweep keeps its rows
    reference = results[0]["eval"]["before"] if results else None
    title = (f"# {model}: compression on {calib['calib_data']} (test split, "
             f"{'all' if eval_limit is None else eval_limit} examples per task, max length {max_length})\n\n")
    if reference:
        title += f"Uncompressed PPL: {reference['overall']['ppl']:.2f} ({reference['examples']} examples).\n\n"
    (output / "table.md").write_text(title + markdown_table(HEADERS, rows))
    console.print(rich_table(f"{model} compression sweep", HEADERS, rows))
