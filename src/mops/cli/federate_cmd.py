"""`mops federate`: FedPrompt and/or MoPs on Flower (simulation or deployment), then the comparison table.

Every setting is an option derived from ModelConfig, DataConfig, MoPConfig, TrainConfig (the ones a federated
run uses) and FederationConfig; the defaults shown are the CPU-sized ones (`federated.config.CPU_PRESET`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mops.cli.common import JsonOpt, console, emit_json
from mops.cli.options import Section, config_command
from mops.data.config import DataConfig
from mops.errors import ConfigError
from mops.federated.config import CPU_PRESET, NOT_FEDERATED, FederatedRun, FederationConfig
from mops.models.config import ModelConfig
from mops.training.config import TrainConfig
from mops.tuners.mops.config import MoPConfig
from mops.tuners.registry import FEDERATED

SECTIONS = (Section("model", ModelConfig), Section("data", DataConfig, defaults=CPU_PRESET["data"]),
            Section("mop", MoPConfig), Section("train", TrainConfig, NOT_FEDERATED, CPU_PRESET["train"]),
            Section("federation", FederationConfig))


@config_command(*SECTIONS)
def federate_command(
    settings: dict,
    method: str = typer.Option("both", "--method", help=f"{', '.join(FEDERATED)} or both (fedprompt first, same P^1)."),
    engine: str = typer.Option("simulation", "--engine", help="simulation (Flower + Ray, one machine) or deployment (SuperLink + one SuperNode process per client)."),
    output: Path = typer.Option(Path("runs/federated"), "--output", "-o", help="Run folder; re-running resumes after the last finished round."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, partitions, sampling and training."),
    client_cpus: int = typer.Option(1, "--client-cpus", help="Simulation: CPU cores per client (parallel clients = cores / this)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Give up on the whole run after this many seconds."),
    as_json: bool = JsonOpt,
) -> None:
    """Federated prompt training on Flower: server-side P^1 and gate pretraining, FedAvg rounds, per-round eval."""
    from mops.evaluation.results import RunResult
    from mops.federated.launcher import ENGINES, run_federated
    from mops.reports.run_report import comparison_rows, write_run_report
    from mops.reports.tables import rich_table

    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    methods = ["fedprompt", "mops"] if method == "both" else [method]
    # every setting is validated before anything starts
    runs = [FederatedRun.from_settings(settings, output=str(output), method=m, seed=seed) for m in methods]
    result: RunResult | None = None
    for run in runs:
        fed = run.federation
        if not as_json:
            console.print(f"[bold]{run.method}[/bold] on Flower ({engine}): {fed.num_clients} clients, "
                          f"{fed.clients_per_round} per round, {fed.rounds} rounds; logs in {output}/flower/{run.method}")
        folder = run_federated(run, engine, client_cpus, timeout, progress=not as_json)
        one = RunResult.from_dict(json.loads((folder / "results.json").read_text()))
        result = one if result is None else result.merged(one)
    write_run_report(output, result, methods)
    if as_json:
        emit_json({m: result.methods[m].final.ppl for m in methods} | {"run_dir": str(output)})
        return
    headers, rows = comparison_rows(result, methods)
    console.print(rich_table(f"federated test PPL ({runs[0].data.data}, {runs[0].model.model})", headers, rows))
    console.print(f"results: {output}/results.md, per round: {output}/rounds.md, adapters: "
                  + ", ".join(f"{output}/{m}/adapter" for m in methods))
