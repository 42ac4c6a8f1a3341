"""`mops data ...`: inspect the selection and split."""

from __future__ import annotations

from typing import Optional

import typer

from mops.cli.common import DataOpt, JsonOpt, SeedOpt, SkipOpt, TasksOpt, TotalOpt, console, emit_json
from mops.data import load_splits
from mops.reports.tables import rich_table

app = typer.Typer(help="Inspect instruction data: selection, split, per-task counts.", no_args_is_help=True)


@app.command("stats")
def stats(
    data: str = DataOpt,
    tasks: Optional[str] = TasksOpt,
    total: int = TotalOpt,
    seed: int = SeedOpt,
    skip_invalid: bool = SkipOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Per-task train/test counts after the paper's selection and 90/10 split."""
    splits = load_splits(data, tasks, total, seed=seed, skip_invalid=skip_invalid)
    summary = splits.summary()
    if as_json:
        emit_json({"data": data, "tasks": summary, "skipped": len(splits.skipped)})
        return
    rows = [[t, c["train"], c["test"]] for t, c in summary.items()]
    rows.append(["total", len(splits.train), len(splits.test)])
    console.print(rich_table(f"{data}: selection and split (seed {seed})", ["task", "train", "test"], rows))
    if splits.skipped:
        console.print(f"[yellow]skipped {len(splits.skipped)} invalid records; first: {splits.skipped[0]}")


@app.command("partition")
def partition(
    data: str = DataOpt,
    tasks: Optional[str] = TasksOpt,
    total: int = TotalOpt,
    clients: int = typer.Option(10, "--clients", help="Number of clients (paper: 100)."),
    scheme: str = typer.Option("skew", "--scheme", help="skew (paper, Appendix A), iid or dirichlet."),
    skew_factor: float = typer.Option(15.0, "--skew-factor", help="skew: the large partition of a task vs the others."),
    alpha: float = typer.Option(0.5, "--alpha", help="dirichlet: concentration (smaller = more skewed)."),
    seed: int = SeedOpt,
    skip_invalid: bool = SkipOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Per-client x task example counts of the federated split of the training data."""
    from mops.federated.partition import histogram, partition_examples

    splits = load_splits(data, tasks, total, seed=seed, skip_invalid=skip_invalid)
    counts = histogram(partition_examples(splits.train, splits.tasks, clients, scheme, seed, skew_factor, alpha),
                       splits.tasks)
    if as_json:
        emit_json({"data": data, "scheme": scheme, "tasks": splits.tasks, "clients": counts})
        return
    rows = [[i, *row, sum(row)] for i, row in enumerate(counts)]
    rows.append(["total", *(sum(col) for col in zip(*counts)), len(splits.train)])
    console.print(rich_table(f"{data}: {scheme} split over {clients} clients (seed {seed})",
                             ["client", *splits.tasks, "total"], rows))
