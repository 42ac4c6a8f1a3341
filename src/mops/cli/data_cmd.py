"""`mops data ...`: inspect the selection and split."""

from __future__ import annotations

import typer

from mops.cli.common import JsonOpt, console, emit_json
from mops.cli.options import Section, config_command
from mops.data import load_splits
from mops.data.config import DataConfig
from mops.federated.config import FederationConfig
from mops.reports.tables import rich_table

app = typer.Typer(help="Inspect instruction data: selection, split, per-task counts.", no_args_is_help=True)

DATA = Section.only("data", DataConfig, "data", "tasks", "total", "skip_invalid")
SeedOpt = typer.Option(0, "--seed", help="Seed of the selection and split (and of the partition).")


@app.command("stats")
@config_command(DATA)
def stats(settings: dict, seed: int = SeedOpt, as_json: bool = JsonOpt) -> None:
    """Per-task train/test counts after the paper's selection and 90/10 split."""
    d = DataConfig(**settings["data"])
    splits = load_splits(d.data, d.tasks, d.total, seed=seed, skip_invalid=d.skip_invalid)
    summary = splits.summary()
    if as_json:
        emit_json({"data": d.data, "tasks": summary, "skipped": len(splits.skipped)})
        return
    rows = [[t, c["train"], c["test"]] for t, c in summary.items()]
    rows.append(["total", len(splits.train), len(splits.test)])
    console.print(rich_table(f"{d.data}: selection and split (seed {seed})", ["task", "train", "test"], rows))
    if splits.skipped:
        console.print(f"[yellow]skipped {len(splits.skipped)} invalid records; first: {splits.skipped[0]}")


@app.command("partition")
@config_command(DATA, Section.only("federation", FederationConfig, "num_clients", "partition", "skew_factor",
                                   "dirichlet_alpha"))
def partition(settings: dict, seed: int = SeedOpt, as_json: bool = JsonOpt) -> None:
    """Per-client x task example counts of the federated split of the training data."""
    from mops.federated.partition import histogram, partition_examples

    d, fed = DataConfig(**settings["data"]), FederationConfig(**settings["federation"])
    splits = load_splits(d.data, d.tasks, d.total, seed=seed, skip_invalid=d.skip_invalid)
    counts = histogram(partition_examples(splits.train, splits.tasks, fed.num_clients, fed.partition, seed,
                                          fed.skew_factor, fed.dirichlet_alpha), splits.tasks)
    if as_json:
        emit_json({"data": d.data, "scheme": fed.partition, "tasks": splits.tasks, "clients": counts})
        return
    rows = [[i, *row, sum(row)] for i, row in enumerate(counts)]
    rows.append(["total", *(sum(col) for col in zip(*counts)), len(splits.train)])
    console.print(rich_table(f"{d.data}: {fed.partition} split over {fed.num_clients} clients (seed {seed})",
                             ["client", *splits.tasks, "total"], rows))
