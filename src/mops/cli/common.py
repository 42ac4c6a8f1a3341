"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from mops.progress import console  # re-exported: every command prints through it

ModelOpt = typer.Option("smollm2-135m", "--model", "-m", help="Short name (smollm2-135m, gemma3-270m), model folder, .gguf file or hub id.")
DataOpt = typer.Option("dolly", "--data", "-d", help="dolly / sni (bundled), a .jsonl/.json file or folder, or a HF dataset id.")
TasksOpt = typer.Option(None, "--tasks", help="Comma-separated task names, or 'dolly'/'sni' for the paper's 7 (default: the paper's for bundled data, else all).")
TotalOpt = typer.Option(5000, "--total", min=1, help="Examples selected before the train/test split (paper: 5000).")
SeedOpt = typer.Option(0, "--seed", help="Seed for selection, split and training.")
MaxLenOpt = typer.Option(256, "--max-length", min=16, help="Tokens per example (prompt + response); context is truncated first.")
TemplateOpt = typer.Option("plain", "--template", help="Prompt template: plain or chat (the tokenizer's chat template).")
DtypeOpt = typer.Option("auto", "--dtype", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16.")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ...")
SkipOpt = typer.Option(False, "--skip-invalid", help="Skip (and count) bad records instead of stopping.")
JsonOpt = typer.Option(False, "--json", help="Print the results as JSON on stdout.")
CompressOpt = typer.Option(
    None, "--compress",
    help="Compress the base first (cached; calibrated on this run's train split): sparsegpt:0.85, "
         "magnitude:2:4 (N pruned of every M), wanda:0.5+int8, int8 ... See `mops compress`.",
)


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
