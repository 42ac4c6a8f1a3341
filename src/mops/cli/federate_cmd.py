"""`mops federate`: FedPrompt and/or MoPs on Flower (simulation or deployment), then the comparison table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mops.cli.common import CompressOpt, DataOpt, JsonOpt, ModelOpt, SeedOpt, TasksOpt, TotalOpt, console, emit_json
from mops.errors import ConfigError
from mops.federated.config import FederatedConfig
from mops.reports.tables import ROUND_HEADERS, markdown_table, rich_table, round_rows

D = FederatedConfig()  # defaults shown in --help come from the config itself


def federate_command(
    method: str = typer.Option("both", "--method", help="mops, fedprompt or both (fedprompt first, same P^1)."),
    engine: str = typer.Option("simulation", "--engine", help="simulation (Flower + Ray, one machine) or deployment (SuperLink + one SuperNode process per client)."),
    output: Path = typer.Option(Path(D.output), "--output", "-o", help="Run folder; re-running resumes after the last finished round."),
    model: str = ModelOpt,
    compress: Optional[str] = CompressOpt,
    data: str = DataOpt,
    tasks: Optional[str] = TasksOpt,
    total: int = TotalOpt,
    max_length: int = typer.Option(D.max_length, "--max-length"),
    num_clients: int = typer.Option(D.num_clients, "--clients", help="Clients = partitions (paper: 100)."),
    clients_per_round: int = typer.Option(D.clients_per_round, "--clients-per-round", help="Sampled per round (paper: 10)."),
    rounds: int = typer.Option(D.rounds, "--rounds"),
    local_steps: int = typer.Option(D.local_steps, "--local-steps", help="Steps per client per round (paper: 250)."),
    batch_size: int = typer.Option(D.batch_size, "--batch-size", "-b"),
    lr: float = typer.Option(D.lr, "--lr"),
    gate_lr: float = typer.Option(D.gate_lr, "--gate-lr"),
    partition: str = typer.Option(D.partition, "--partition", help="skew (paper), iid or dirichlet."),
    skew_factor: float = typer.Option(D.skew_factor, "--skew-factor"),
    alpha: float = typer.Option(D.dirichlet_alpha, "--alpha", help="Dirichlet concentration."),
    num_experts: int = typer.Option(D.num_experts, "--num-experts"),
    prompts_per_expert: int = typer.Option(D.prompts_per_expert, "--prompts-per-expert", help="0: 70 with merge routing, 10 with attention routing."),
    routing: str = typer.Option(D.routing, "--routing", help="merge or attention (the paper's)."),
    injection_layer: int = typer.Option(D.injection_layer, "--injection-layer", help="-1: L/3."),
    recovery_steps: int = typer.Option(D.recovery_steps, "--recovery-steps"),
    gate_pretrain_steps: int = typer.Option(D.gate_pretrain_steps, "--gate-pretrain-steps"),
    gate_pretrain_examples: int = typer.Option(D.gate_pretrain_examples, "--gate-pretrain-examples"),
    eval_limit_per_task: int = typer.Option(D.eval_limit_per_task, "--eval-limit-per-task", help="0: whole test split."),
    round_timeout: float = typer.Option(D.round_timeout, "--round-timeout", help="Seconds to wait for clients per round."),
    seed: int = SeedOpt,
    inject_faults: str = typer.Option("", "--inject-faults", help="Fault tests: PARTITION:KIND,... with KIND raise, hang, nan or shape."),
    client_cpus: int = typer.Option(1, "--client-cpus", help="Simulation: CPU cores per client (parallel clients = cores / this)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Give up on the whole run after this many seconds."),
    as_json: bool = JsonOpt,
) -> None:
    """Federated prompt training on Flower: server-side P^1 and gate pretraining, FedAvg rounds, per-round eval."""
    from mops.federated.launcher import ENGINES, run_federated
    from mops.training.pipeline import comparison_rows, write_reports

    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    methods = ["fedprompt", "mops"] if method == "both" else [method]
    configs = [FederatedConfig(  # every setting is validated before anything starts
        output=str(output), method=m, model=model, compress=compress or "", data=data, tasks=tasks or "", total=total,
        max_length=max_length, num_clients=num_clients, clients_per_round=clients_per_round, rounds=rounds,
        local_steps=local_steps, batch_size=batch_size, lr=lr, gate_lr=gate_lr, partition=partition,
        skew_factor=skew_factor, dirichlet_alpha=alpha, num_experts=num_experts, prompts_per_expert=prompts_per_expert, routing=routing,
        injection_layer=injection_layer, recovery_steps=recovery_steps, gate_pretrain_steps=gate_pretrain_steps,
        gate_pretrain_examples=gate_pretrain_examples, eval_limit_per_task=eval_limit_per_task,
        round_timeout=round_timeout, seed=seed, inject_faults=inject_faults) for m in methods]
    results: dict = {}
    for cfg in configs:
        if not as_json:
            console.print(f"[bold]{cfg.method}[/bold] on Flower ({engine}): {cfg.num_clients} clients, "
                          f"{cfg.clients_per_round} per round, {cfg.rounds} rounds; logs in {output}/flower/{cfg.method}")
        folder = run_federated(cfg, engine, client_cpus, timeout, progress=not as_json)
        payload = json.loads((folder / "results.json").read_text())
        results = {**results, **payload}
    write_reports(output, results, methods)
    (output / "rounds.md").write_text("Per round (test PPL on the eval subset; bytes as serialised by Flower).\n\n"
                                      + markdown_table(ROUND_HEADERS, round_rows(results, methods)))
    headers, rows = comparison_rows(results, methods)
    if as_json:
        emit_json({m: results[m]["final"]["ppl"] for m in methods} | {"run_dir": str(output)})
    else:
        console.print(rich_table(f"federated test PPL ({data}, {model})", headers, rows))
        console.print(f"results: {output}/results.md, per round: {output}/<method>/rounds, adapters: "
                      + ", ".join(f"{output}/{m}/adapter" for m in methods))
