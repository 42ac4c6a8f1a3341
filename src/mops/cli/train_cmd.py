"""`mops train` and `mops demo`: the paper's pipeline for any registered methods from the same frozen parts.

Every setting is an option derived from ModelConfig, DataConfig, MoPConfig and TrainConfig (`cli/options.py`);
only what a run is (methods, seeds, folder, log) is declared here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mops.cli.common import JsonOpt, emit_json
from mops.cli.options import Section, config_command
from mops.data.config import DataConfig
from mops.errors import ConfigError
from mops.models.config import ModelConfig
from mops.training.config import TrainConfig
from mops.training.runs import RunRequest, execute
from mops.tuners.mops.config import MoPConfig
from mops.tuners.registry import CENTRALISED, METHODS, check_order

def parse_methods(text: str) -> list[str]:
    methods = ["baseline", "mops"] if text == "both" else [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in CENTRALISED]
    if bad or not methods or len(set(methods)) != len(methods):
        raise ConfigError(f"--method must be both or a comma-separated list of {', '.join(CENTRALISED)}, got {text!r}")
    check_order(methods)
    return methods


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds must be distinct integers separated by commas, got {text!r}")
    return seeds


def train_sections(**presets: dict) -> tuple[Section, ...]:
    """The option sections of a training command; `presets`: per section, defaults other than the dataclass's."""
    return (Section("model", ModelConfig, defaults=presets.get("model", {})),
            Section("data", DataConfig, defaults=presets.get("data", {})),
            Section("mop", MoPConfig, defaults=presets.get("mop", {})),
            Section("train", TrainConfig, defaults=presets.get("train", {})))


METHOD_HELP = "both (= baseline,mops) or a comma-separated list of: " + "; ".join(
    f"{m} ({METHODS[m].help})" for m in CENTRALISED)


@config_command(*train_sections())
def train_command(
    settings: dict,
    method: str = typer.Option("both", "--method", help=METHOD_HELP),
    output: Path = typer.Option(Path("runs/train"), "--output", "-o", help="Run folder; re-running the same command "
                                "resumes it (other settings are refused: see --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run in --output even if its settings differ."),
    seeds: str = typer.Option("0", "--seeds", help="Training seed, or several (0,1,2) for a paired comparison over "
                                                   "seeds (mean +- std of each method's gain over its reference)."),
    experiment_log: Optional[Path] = typer.Option(None, "--experiment-log", help="Research log folder: add this run "
                                                  "(named after -o) to its log.jsonl and index.md."),
    note: str = typer.Option("", "--note", help="What this run tries (the log's description)."),
    as_json: bool = JsonOpt,
) -> None:
    """Recovery prompts -> gate pretraining -> each method; per-task PPL table, heatmaps, adapters."""
    req = RunRequest.from_settings(settings, methods=parse_methods(method), seeds=parse_seeds(seeds), output=output,
                                   progress=not as_json, experiment_log=experiment_log, note=note, overwrite=overwrite)
    results = execute(req)
    if as_json:
        if len(req.seeds) > 1:
            emit_json({"summary": results.summary, "run_dir": str(output)})
        else:
            run = results.per_seed[req.seeds[0]]
            emit_json({m: run.methods[m].final.ppl for m in req.methods} | {"run_dir": str(output)})


# `mops demo`: the README's main job at CPU size (about 5 minutes on 2 cores with SmolLM2-135M).
DEMO = dict(data=dict(max_length=128),
            train=dict(steps=30, batch_size=4, recovery_steps=5, recovery_lr=1e-2, gate_pretrain_steps=200,
                       gate_pretrain_examples=140, eval_limit_per_task=10, checkpoint_every=10))


@config_command(*train_sections(**DEMO))
def demo_command(
    settings: dict,
    output: Path = typer.Option(Path("runs/demo"), "--output", "-o", help="Run folder (re-running resumes)."),
) -> None:
    """The paper's comparison at CPU size (about 5 minutes on 2 cores with SmolLM2-135M).

    Recovery prompts P^1, gate pretraining, then prompt tuning at layer 10 (70 prompts) and MoPs (7 experts,
    70 slots, merge routing) for the same steps on the same batches; prints the per-task table, writes the gate
    heatmaps. Every `mops train` setting may be changed; the defaults shown are the demo's.
    """
    execute(RunRequest.from_settings(settings, methods=["baseline", "mops"], seeds=[0], output=output))
