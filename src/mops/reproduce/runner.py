"""Run a grid: each cell is one `mops train` run (or, federated, one `mops federate` run per method and seed)
in `<out>/cells/<key>`; finished cells are read back, an interrupted one resumes from its stages, checkpoints
or last finished round, and stages shared across cells (the same P^1, the same baseline) come from the stage
store."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from mops.provenance import versions
from mops.reproduce.grid import Cell, Grid
from mops.training.runs import RunRequest, execute


def _method_record(result: dict) -> dict:
    final = result["final"]
    record = {"ppl": final["ppl"]["overall"]["ppl"],
              "per_task": {t: s["ppl"] for t, s in final["ppl"]["per_task"].items()},
              "trainable_parameters": result.get("trainable_parameters")}
    if "gate" in final:
        evals = result.get("evals") or [r["eval"] for r in result.get("rounds", [])]  # federated: one per round
        record["gate"] = final["gate"]
        record["gate_during"] = [{"step": e["step"], "gate": e["gate"]} for e in evals if "gate" in e]
    return record


def cell_record(cell: Cell, per_seed: dict[int, dict]) -> dict:
    """What the reports need from one finished cell: per seed and method, PPL (overall, per task), trainable
    parameter count, gate matrices."""
    seeds = {}
    for seed, results in per_seed.items():
        entry = {m: _method_record(results[m]) for m in cell.methods}
        if "gate_pretrain" in results and "gate" in results["gate_pretrain"]:
            entry["gate_pretrained"] = results["gate_pretrain"]["gate"]
        entry["input_prompts_only"] = results["input_prompts_only"]["ppl"]["overall"]["ppl"]
        seeds[str(seed)] = entry
    first = next(iter(per_seed.values()))
    return {"name": cell.name, "key": cell.key, "settings": asdict(cell), "tasks": first["tasks"],
            "resolved": first["settings"], "base": first.get("base"), "per_seed": seeds}


def run_federated_cell(cell: Cell, folder: Path, progress: bool) -> dict[int, dict]:
    """Each seed: each method on Flower (FedPrompt first: same P^1) into `folder/seed-N/<method>`; a method
    whose results are on disk is read back. Returns seed -> {tasks, input_prompts_only, ..., <method>: ...}."""
    from mops.federated.launcher import run_federated

    per_seed: dict[int, dict] = {}
    for seed in cell.seeds:
        results: dict = {}
        for method in cell.methods:
            cfg = cell.federated_config(method, seed, folder / f"seed-{seed}")
            file = Path(cfg.output) / method / "results.json"
            if not file.is_file():
                run_federated(cfg, progress=progress)
            results.update(json.loads(file.read_text()))
        per_seed[seed] = results
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


def _run_centralised(cell: Cell, folder: Path, progress: bool) -> dict[int, dict]:
    req = RunRequest(model=cell.model, data=cell.data, tasks=None, total=cell.total, methods=list(cell.methods),
                     output=folder, mop=dict(cell.mop), train=dict(cell.train), max_length=cell.max_length,
                     template=cell.template, dtype="auto", device="auto", seeds=list(cell.seeds),
                     skip_invalid=False, compress=cell.compress, progress=progress)
    results = execute(req)
    return {cell.seeds[0]: results} if len(cell.seeds) == 1 else results["per_seed"]


def run_grid(grid: Grid, out: Path, progress: bool = True, on_cell=None) -> dict:
    """Run every cell in order; after each one `results.json` (every number, settings, versions) is rewritten
    and `on_cell(records)` is called (the reports), so an interrupted grid keeps what it finished."""
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for cell in grid.cells:
        records.append(run_cell(cell, out / "cells" / f"{cell.key}", progress))
        payload = {"experiment": grid.experiment, "title": grid.title, "versions": versions(), "cells": records,
                   "command": "mops " + " ".join(sys.argv[1:])}
        (out / "results.json").write_text(json.dumps(payload, indent=2))
        if on_cell is not None:
            on_cell(grid, records, out)
    return {"cells": records}
