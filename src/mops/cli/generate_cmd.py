"""`mops generate`: answer instructions with a base model + MoPs adapter (gate computed from the prompt)."""

from __future__ import annotations

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
    instruction: list[str] = typer.Argument(..., help="One or more instructions (batched, left-padded)."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", "-a", help="MoPs adapter folder (save_pretrained)."),
    input_text: str = typer.Option("", "--input", help="Optional input/context for every instruction."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    as_json: bool = JsonOpt,
) -> None:
    """Greedy generation; with --adapter the MoPs experts and gate apply (on the base it was trained on)."""
    from mops.data import Example, Tokenizer, collate
    from mops.tuners.mops.model import MoPModel

    m, template = ModelConfig(**settings["model"]), DataConfig(**settings["data"]).template
    base = load_base_for(m.model, m.compress, adapter, dtype=m.dtype, device=m.device)
    mop = MoPModel.from_pretrained(base, adapter) if adapter is not None else None
    slots = mop.config.num_slots if mop is not None else 0
    context = getattr(base.model.config, "max_position_embeddings", None) or 2048
    budget = context - slots - max_new_tokens  # the prompt's share of the model's context
    if budget < 16:
        raise ConfigError(f"--max-new-tokens {max_new_tokens}: the model's context is {context} tokens "
                          f"({slots} prompt slots), too few left for the instruction")
    tok = Tokenizer(base.tokenizer, ["_"], max_length=budget, template=template)
    examples = [Example("_", text, input_text, "-") for text in instruction]
    prompts = tok.encode_all(examples, prompt_only=True)
    for n, (ex, enc) in enumerate(zip(examples, prompts)):
        full = len(tok.prompt_ids(ex, budget=1 << 62))  # the prompt's length before shortening
        if full > len(enc.input_ids):
            console.print(f"[yellow]warning: instruction {n + 1} has {full} tokens; shortened to {len(enc.input_ids)} "
                          f"to fit the model's context ({context} tokens) with {max_new_tokens} new tokens")
    batch = collate(prompts, base.tokenizer.pad_token_id, left_pad=True)
    ids, mask = batch["input_ids"].to(base.model.device), batch["attention_mask"].to(base.model.device)
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=base.tokenizer.pad_token_id)
    if mop is not None:
        out = mop.generate(ids, mask, **kwargs)
        weights = mop.last_gate_weights.tolist() if mop.last_gate_weights is not None else None
    else:
        out = base.model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1] :]
        weights = None
    texts = base.tokenizer.batch_decode(out, skip_special_tokens=True)
    if as_json:
        emit_json([{"instruction": i, "output": t, "gate": None if weights is None else weights[n]}
                   for n, (i, t) in enumerate(zip(instruction, texts))])
        return
    for n, (inst, text) in enumerate(zip(instruction, texts)):
        gate = "" if weights is None else "  gate=" + " ".join(f"{w:.2f}" for w in weights[n])
        console.print(f"[bold]> {inst}[/bold]{gate}\n{text.strip()}\n", highlight=False)
