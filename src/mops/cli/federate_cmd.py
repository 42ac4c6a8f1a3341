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
from mops.cli.train_cmd import parse_seeds
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
    method: str = typer.Option("both", "--method", help=f"Comma-separated, of {', '.join(FEDERATED)}; or both (= fedprompt,mops). Each from the same P^1."),
    engine: str = typer.Option("simulation", "--engine", help="simulation (Flower + Ray, one machine) or deployment (SuperLink + one SuperNode process per client)."),
    output: Path = typer.Option(Path("runs/federated"), "--output", "-o", help="Run folder; re-running resumes after the last finished round."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds of the split, partitions, sampling and training; several: one paired run per seed in <output>/seed-N and summary.{json,md} (gain mean +- std)."),
    client_cpus: int = typer.Option(1, "--client-cpus", help="Simulation: CPU cores per client (parallel clients = cores / this)."),
    client_gpus: Optional[float] = typer.Option(None, "--client-gpus", help="Simulation: GPU share per client (default: 1 / clients per round where CUDA is visible, else 0 = CPU)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Give up on the whole run after this many seconds."),
    as_json: bool = JsonOpt,
) -> None:
    """Federated prompt training on Flower: server-side P^1 and gate pretraining, FedAvg rounds, per-round eval."""
    from mops.evaluation.results import RunResult
    import torch

    from mops.federated.launcher import ENGINES, client_gpu_share, run_federated
    from mops.reports.run_report import (comparison_rows, federated_summary, federated_summary_markdown,
                                         write_run_report)
    from mops.reports.tables import rich_table

    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    methods = ["fedprompt", "mops"] if method == "both" else [m.strip() for m in method.split(",") if m.strip()]
    seed_list = parse_seeds(seeds)

    def folder(seed: int) -> Path:
        return output if len(seed_list) == 1 else output / f"seed-{seed}"

    # every setting is validated before anything starts
    runs = {seed: [FederatedRun.from_settings(settings, output=str(folder(seed)), method=m, seed=seed) for m in methods]
            for seed in seed_list}
    client_gpu_share(client_gpus, runs[seed_list[0]][0].federation.clients_per_round, torch.cuda.is_available())
    per_seed: dict[int, RunResult] = {}
    for seed, seed_runs in runs.items():
        result: RunResult | None = None
        for run in seed_runs:
            fed = run.federation
            if not as_json:
                console.print(f"[bold]{run.method}[/bold] seed {seed} on Flower ({engine}): {fed.num_clients} clients, "
                              f"{fed.clients_per_round} per round, {fed.rounds} rounds; logs in {folder(seed)}/flower/{run.method}")
            done = run_federated(run, engine, client_cpus, timeout, progress=not as_json, client_gpus=client_gpus)
            one = RunResult.from_dict(json.loads((done / "results.json").read_text()))
            result = one if result is None else result.merged(one)
        write_run_report(folder(seed), result, methods)
        per_seed[seed] = result
        if not as_json:
            headers, rows = comparison_rows(result, methods)
            first = seed_runs[0]
            console.print(rich_table(f"federated test PPL ({first.data.data}, {first.model.model}, seed {seed})",
                                     headers, rows))
            console.print(f"results: {folder(seed)}/results.md, per round: {folder(seed)}/rounds.md, adapters: "
                          + ", ".join(f"{folder(seed)}/{m}/adapter" for m in methods))
    first = runs[seed_list[0]][0]
    summary = federated_summary(per_seed, methods, first.data.data, first.model.compress) if len(seed_list) > 1 else {}
    if summary:
        (output / "summary.json").write_text(json.dumps(summary, indent=2))
        (output / "summary.md").write_text(federated_summary_markdown(summary))
        if not as_json:
            console.print(federated_summary_markdown(summary), highlight=False)
    if as_json:
        last = per_seed[seed_list[-1]]
        emit_json({m: last.methods[m].final.ppl for m in methods} | {"run_dir": str(output)}
                  | ({"summary": {k: v for k, v in summary.items() if k != "paired"}} if summary else {}))
