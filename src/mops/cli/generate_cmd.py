"""`mops generate`: answer instructions with a base model + MoPs adapter (gate computed from each prompt), from
the command line or a JSONL file of prompts, batched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mops.cli.common import JsonOpt, console, emit_json, load_base_for
from mops.cli.options import Section, config_command
from mops.data.config import DataConfig
from mops.errors import ConfigError
from mops.models.config import ModelConfig


@config_command(Section("model", ModelConfig), Section.only("data", DataConfig, "template"))
def generate_command(
    settings: dict,
    instruction: Optional[list[str]] = typer.Argument(None, help="One or more instructions (or --input FILE)."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="MoPs adapter folder (save_pretrained)."),
    context: str = typer.Option("", "--context", help="Optional input/context for every instruction."),
    prompts_file: Optional[Path] = typer.Option(None, "--input", help="JSONL of prompts: one object per line with "
                                                "instruction and optionally input; other fields are copied to the output."),
    output: Optional[Path] = typer.Option(None, "--output", help="Write one JSON line per prompt (its fields, "
                                          "output, gate) here instead of printing."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(8, "--batch-size", "-b", min=1, help="Prompts generated together (left-padded)."),
    as_json: bool = JsonOpt,
) -> None:
    """Greedy generation; with --adapter the MoPs experts and gate apply (on the base it was trained on)."""
    from mops.data import Example, Tokenizer
    from mops.data.readers import read_prompts
    from mops.evaluation.generation import generate_answers, greedy_fn
    from mops.tuners.mops.model import MoPModel

    if bool(instruction) == (prompts_file is not None):
        raise ConfigError("give instructions as arguments or --input FILE (one of them)")
    records = read_prompts(prompts_file) if prompts_file is not None else \
        [{"instruction": text, "input": context} for text in instruction]
    m, template = ModelConfig(**settings["model"]), DataConfig(**settings["data"]).template
    base = load_base_for(m.model, m.compress, adapter, dtype=m.dtype, device=m.device)
    mop = MoPModel.from_pretrained(base, adapter) if adapter is not None else None
    slots = mop.config.num_slots if mop is not None else 0
    window = getattr(base.model.config, "max_position_embeddings", None) or 2048
    budget = window - slots - max_new_tokens  # the prompt's share of the model's context
    if budget < 16:
        raise ConfigError(f"--max-new-tokens {max_new_tokens}: the model's context is {window} tokens "
                          f"({slots} prompt slots), too few left for the instruction")
    tok = Tokenizer(base.tokenizer, ["_"], max_length=budget, template=template)
    examples = [Example("_", r["instruction"], r.get("input", ""), "-") for r in records]
    prompts = tok.encode_all(examples, prompt_only=True)
    for n, (ex, enc) in enumerate(zip(examples, prompts)):
        full = len(tok.prompt_ids(ex, budget=1 << 62))  # the prompt's length before shortening
        if full > len(enc.input_ids):
            console.print(f"[yellow]warning: instruction {n + 1} has {full} tokens; shortened to {len(enc.input_ids)} "
                          f"to fit the model's context ({window} tokens) with {max_new_tokens} new tokens")
    answers, gates = generate_answers(greedy_fn(base, mop), prompts, base.tokenizer, max_new_tokens, batch_size,
                                      base.model.device, progress=output is not None)
    rows = [{**r, "output": a, "gate": g} for r, a, g in zip(records, answers, gates)]
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(json.dumps(row) + "\n" for row in rows))
        console.print(f"{len(rows)} answers: {output}")
    elif as_json:
        emit_json(rows)
    else:
        for row in rows:
            gate = "" if row["gate"] is None else "  gate=" + " ".join(f"{w:.2f}" for w in row["gate"])
            console.print(f"[bold]> {row['instruction']}[/bold]{gate}\n{row['output'].strip()}\n", highlight=False)
