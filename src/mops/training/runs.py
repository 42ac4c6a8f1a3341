"""One training run as data (`RunRequest`) and its execution (`execute`): load the base once, then for each
seed train the requested methods from shared frozen parts. Used by `mops train`, `mops demo` and
`mops reproduce`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mops.compression.config import compression_from
from mops.progress import console
from mops.reports.tables import rich_table


@dataclass
class RunRequest:
    """Everything one run needs (`mops train` flags; `mops demo` and `mops reproduce` fill it themselves)."""

    model: str
    data: str
    tasks: Optional[str]
    total: int
    methods: list[str]
    output: Path
    mop: dict
    train: dict
    max_length: int
    template: str
    dtype: str
    device: str
    seeds: list[int]
    skip_invalid: bool
    compress: Optional[str] = None
    progress: bool = True
    experiment_log: Optional[Path] = None
    note: str = ""


def execute(req: RunRequest) -> dict:
    """Load once; for each seed, train (baseline and/or MoPs from shared stages) into its run folder.

    One seed writes into `req.output`; several write `req.output/seed-N` plus `summary.{json,md}` (paired
    gains, mean +- std). The data selection and split use the first seed, so every seed sees the same test set.
    """
    from mops.data import load_splits
    from mops.models import load_base_model
    from mops.training import Experiment, Runtime, TrainConfig, run_methods
    from mops.training.pipeline import comparison_rows
    from mops.training.seeds import summarize_seeds, summary_markdown
    from mops.tuners.mops.config import MoPConfig
    from mops.tuners.mops.model import MoPModel

    compression = compression_from(req.compress, req.data, req.seeds[0])  # fails fast on a bad spec
    splits = load_splits(req.data, req.tasks, req.total, seed=req.seeds[0], skip_invalid=req.skip_invalid)
    if splits.skipped:
        console.print(f"[yellow]skipped {len(splits.skipped)} invalid records; first: {splits.skipped[0]}")
    req.output.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in req.__dict__.items()}
    (req.output / "run_config.json").write_text(json.dumps(settings, indent=2))
    base = None
    per_seed: dict[int, dict] = {}
    for seed in req.seeds:
        run_dir = req.output if len(req.seeds) == 1 else req.output / f"seed-{seed}"
        rt = Runtime.create(run_dir, device=req.device, progress=req.progress)
        base = base or load_base_model(req.model, dtype=req.dtype, device=str(rt.accelerator.device),
                                       compression=compression)
        model = MoPModel(base, MoPConfig(**req.mop, tasks=splits.tasks, init_seed=seed))
        exp = Experiment(model, splits, TrainConfig(**req.train, seed=seed), run_dir, rt, req.max_length, req.template)
        per_seed[seed] = run_methods(exp, req.methods)
        rt.logger.close()
        model.unload()
        if rt.is_main and req.progress:
            headers, rows = comparison_rows(per_seed[seed], req.methods)
            console.print(rich_table(f"test PPL ({req.data}, {req.model}{'+' + base.compression if base.compression else ''}, seed {seed})", headers, rows))
            console.print(f"results: {run_dir}/results.md, figures: {run_dir}/*.png, "
                          f"adapters: {', '.join(f'{run_dir}/{m}/adapter' for m in req.methods)}")
    if req.experiment_log is not None and rt.is_main:
        from mops.reports.experiment_log import append_record, experiment_record

        append_record(req.experiment_log, experiment_record(req.output.name, req.note, settings, per_seed, req.output))
    if len(req.seeds) == 1:
        return per_seed[req.seeds[0]]
    summary = summarize_seeds(per_seed, splits.tasks) if {"baseline", "mops"} <= set(req.methods) else {}
    if summary:
        (req.output / "summary.json").write_text(json.dumps(summary, indent=2))
        (req.output / "summary.md").write_text(summary_markdown(summary))
        if req.progress:
            console.print(summary_markdown(summary), highlight=False)
    return {"per_seed": per_seed, "summary": summary}

