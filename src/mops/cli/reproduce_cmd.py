"""`mops reproduce`: one of the paper's experiments (or a grid file) as cached, resumable runs + reports."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mops.cli.common import console
from mops.cli.options import Section, config_command
from mops.cli.train_cmd import parse_seeds
from mops.errors import ConfigError
from mops.models.config import ModelConfig


@config_command(Section.only("model", ModelConfig, "model"))
def reproduce_command(
    settings: dict,
    experiment: str = typer.Argument(..., help="table2, table3, table4, table5, table6, table8, fig3, fig4, gating, budget, or 'grid' with --grid."),
    grid_file: Optional[Path] = typer.Option(None, "--grid", help="A TOML/YAML grid file (see the README)."),
    size: str = typer.Option("quick", "--size", help="quick (CPU: minutes per cell) or full (GPU sizes)."),
    full: bool = typer.Option(False, "--full", help="Same as --size full."),
    quick: bool = typer.Option(False, "--quick", help="Same as --size quick (the default)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds of every cell (default 0,1,2)."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated cell names to run; the report also keeps the other cells already finished in the output folder."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Results folder (default results/reproduce/<experiment>)."),
    list_cells: bool = typer.Option(False, "--list", help="Print the cells and exit."),
) -> None:
    """Run a grid of paired runs (cached by settings: a re-run computes only what is missing; an interrupted
    grid resumes) and write results.md, results.json (every number, settings, versions) and PNG figures."""
    from mops.reproduce.experiments import builtin_grid
    from mops.reproduce.grid import load_grid
    from mops.reports.grid_report import write_reports
    from mops.reproduce.runner import run_grid

    if full and quick:
        raise ConfigError("--quick and --full exclude each other")
    size = "full" if full else "quick" if quick else size
    if experiment == "grid":
        if grid_file is None:
            raise ConfigError("mops reproduce grid needs --grid FILE")
        grid = load_grid(grid_file)
        if seeds:
            for cell in grid.cells:
                cell.seeds = parse_seeds(seeds)
    elif grid_file is not None:
        raise ConfigError(f"--grid {grid_file}: a grid file runs as `mops reproduce grid --grid FILE`, "
                          f"not with the built-in experiment {experiment!r}")
    else:
        grid = builtin_grid(experiment, size, settings["model"]["model"], parse_seeds(seeds) if seeds else None)
    wanted = None
    if only:
        wanted = {n.strip() for n in only.split(",") if n.strip()}
        missing = sorted(wanted - {c.name for c in grid.cells})
        if missing:
            raise ConfigError(f"--only: no cell named {missing}; cells: {[c.name for c in grid.cells]}")
    if list_cells:
        for cell in grid.cells if wanted is None else [c for c in grid.cells if c.name in wanted]:
            console.print(f"{cell.name}: {cell.model.model} {cell.data.data} {cell.model.compress or 'uncompressed'} "
                          f"{','.join(cell.methods)} seeds {cell.seeds} key {cell.key}", highlight=False)
        return
    out = output or Path("results/reproduce") / (grid_file.stem if experiment == "grid" else experiment)
    run_grid(grid, out, progress=True, on_cell=write_reports, only=wanted)
    console.print((out / "results.md").read_text(), highlight=False)
    console.print(f"results: {out}/results.md, {out}/results.json, figures: {out}/*.png")
