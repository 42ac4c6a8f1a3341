"""Run a grid: each cell is one `mops train` run (or, federated, one `mops federate` run per method and seed)
in `<out>/cells/<key>`; finished cells are read back, an interrupted one resumes from its stages, checkpoints
or last finished round, and stages shared across cells (the same P^1, the same baseline) come from the stage
store."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from mops.evaluation.results import MethodResult, RunResult
from mops.provenance import command_line, versions
from mops.reproduce.grid import Cell, Grid
from mops.training.config import TrainConfig
from mops.training.stages import METHOD_REVISION
from mops.training.runs import RunRequest, execute
from mops.tuners.mops.config import MoPConfig


def _method_record(result: MethodResult) -> dict:
    final = result.final
    record = {"ppl": final.overall, "per_task": {t: s["ppl"] for t, s in final.ppl["per_task"].items()},
              "trainable_parameters": result.trainable_parameters,
              # test PPL after each evaluated step (the budget curve; the last point is the final evaluation)
              "curve": [{"step": e.step, "ppl": e.overall} for e in [*result.evaluations, final]]}
    if result.adapter is not None:
        record["adapter"] = result.adapter
    if final.generation is not None:
        record |= {"rougeL": final.metric("rougeL"), "exact_match": final.metric("exact_match")}
    if final.gate is not None:
        record["gate"] = final.gate
        record["gate_during"] = [{"step": e.step, "gate": e.gate} for e in result.evaluations if e.gate is not None]
    return record


def cell_record(cell: Cell, per_seed: dict[int, RunResult]) -> dict:
    """What the reports need from one finished cell: per seed and method, PPL (overall, per task), trainable
    parameter count, gate matrices; and the command that ran it (a grid's cells may come from several runs)."""
    seeds = {}
    for seed, result in per_seed.items():
        entry = {m: _method_record(result.methods[m]) for m in cell.methods}
        if result.pretrained_gate is not None:
            entry["gate_pretrained"] = result.pretrained_gate
        entry["input_prompts_only"] = result.input_prompts_only.overall
        seeds[str(seed)] = entry
    first = next(iter(per_seed.values()))
    return {"name": cell.name, "key": cell.key, "revision": METHOD_REVISION, "command": command_line(),
            "settings": asdict(cell), "tasks": first.tasks, "resolved": first.settings, "base": first.base,
            "per_seed": seeds}


def run_federated_cell(cell: Cell, folder: Path, progress: bool) -> dict[int, RunResult]:
    """Each seed: each method on Flower (FedPrompt first: same P^1) into `folder/seed-N/<method>`; a method
    whose results are on disk is read back."""
    from mops.federated.launcher import run_federated

    per_seed: dict[int, RunResult] = {}
    for seed in cell.seeds:
        result: RunResult | None = None
        for method in cell.methods:
            run = cell.federated_run(method, seed, folder / f"seed-{seed}")
            file = Path(run.output) / method / "results.json"
            if not file.is_file():
                run_federated(run, progress=progress)
            one = RunResult.from_dict(json.loads(file.read_text()))
            result = one if result is None else result.merged(one)
        per_seed[seed] = result
    return per_seed


def run_cell(cell: Cell, folder: Path, progress: bool) -> dict:
    """Train one cell (or read it back when finished); returns its `cell_record`."""
    done = folder / "cell.json"
    if done.is_file():
        return json.loads(done.read_text())
    if cell.federated is not None:
        record = cell_record(cell, run_federated_cell(cell, folder, progress))
    else:
        record = cell_record(cell, _run_centralised(cell, folder, progress))
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(done)  # a cell counts as finished only once its record is complete
    return record


def _run_centralised(cell: Cell, folder: Path, progress: bool) -> dict[int, RunResult]:
    req = RunRequest(model=cell.model, data=cell.data, mop=MoPConfig(**cell.mop), train=TrainConfig(**cell.train),
                     methods=list(cell.methods), seeds=list(cell.seeds), output=folder, progress=progress)
    return execute(req).per_seed


def run_grid(grid: Grid, out: Path, progress: bool = True, on_cell=None, only: set[str] | None = None) -> dict:
    """Run every cell in order (only the cells named in `only`, when given); after each one `results.json`
    (every number, settings, versions) is rewritten and `on_cell(records)` is called (the reports), so an
    interrupted grid keeps what it finished. Cells not run but finished in `out` by an earlier run with the same
    settings are reported too: running one row never drops the others from the table."""
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for cell in grid.cells:
        folder = out / "cells" / f"{cell.key}"
        if only is not None and cell.name not in only and not (folder / "cell.json").is_file():
            continue
        records.append(run_cell(cell, folder, progress))
        payload = {"experiment": grid.experiment, "title": grid.title, "versions": versions(), "cells": records,
                   "command": command_line()}
        (out / "results.json").write_text(json.dumps(payload, indent=2))
        if on_cell is not None:
            on_cell(grid, records, out)
    return {"cells": records}
