"""One training run as data (`RunRequest`) and its execution (`execute`): load the base once, then for each
seed train the requested methods from shared frozen parts. Used by `mops train`, `mops demo` and
`mops reproduce`."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from mops.compression.config import compression_from
from mops.errors import ConfigError
from mops.progress import console
from mops.reports.tables import rich_table

RUN_CONFIG = "run_config.json"
# RunRequest fields that do not change a run's numbers: a folder may be re-run with other values of these.
# (methods: a re-run may add methods; each method's stage is keyed by its own settings.)
_NOT_SETTINGS = ("output", "progress", "experiment_log", "note", "overwrite", "methods")


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
    overwrite: bool = False

    def settings(self) -> dict:
        """What decides the run's numbers, as JSON values (what `run_config.json` must match on a re-run)."""
        raw = {k: v for k, v in self.__dict__.items() if k not in _NOT_SETTINGS}
        return json.loads(json.dumps(raw, default=str))


def _flat(settings: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_run_folder(req: RunRequest) -> None:
    """Refuse to train into a folder that holds a run with other settings (its results would be relabelled).

    A folder is reusable when it does not exist, is empty, or its `run_config.json` has the same settings
    (then finished stages are kept and the running one resumes); `--overwrite` replaces a mops run folder.
    """
    folder = req.output
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ConfigError(f"--output {folder} is a file, not a run folder")
    file = folder / RUN_CONFIG
    if not file.is_file():
        if any(folder.iterdir()):
            raise ConfigError(f"--output {folder} is not empty and holds no mops run ({RUN_CONFIG} is missing): "
                              "use a new or empty folder")
        return
    if req.overwrite:
        return
    try:
        stored = _flat(json.loads(file.read_text()))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file}: damaged ({err.msg}); use a new --output, or --overwrite to replace the run") from None
    wanted = _flat(req.settings())
    diffs = [f"{k}: {stored.get(k, '(unset)')!r} -> {v!r}" for k, v in wanted.items() if stored.get(k, "(unset)") != v]
    if diffs:
        raise ConfigError(f"{folder} holds a run with other settings ({'; '.join(diffs)}): its results would be "
                          "relabelled. Use a new --output, or --overwrite to replace that run")


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
    from accelerate import PartialState
    from mops.models.loading import resolve_device, resolve_dtype

    # Every setting is checked before anything is loaded or written: a refused run leaves no trace.
    compression = compression_from(req.compress, req.data, req.seeds[0])
    resolve_dtype(req.dtype, resolve_device(req.device))
    TrainConfig(**req.train)
    splits = load_splits(req.data, req.tasks, req.total, seed=req.seeds[0], skip_invalid=req.skip_invalid)
    MoPConfig(**req.mop, tasks=splits.tasks)
    check_run_folder(req)
    if splits.skipped:
        console.print(f"[yellow]skipped {len(splits.skipped)} invalid records; first: {splits.skipped[0]}")
    state = PartialState(cpu=req.device == "cpu")  # this process's device (one GPU each under accelerate launch)
    base = load_base_model(req.model, dtype=req.dtype, device=str(state.device), compression=compression)
    MoPConfig(**req.mop, tasks=splits.tasks).validate_for(base.model.config.num_hidden_layers)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in req.__dict__.items()}
    settings["base_fingerprint"] = base.fingerprint  # recorded, not compared: a change retrains every stage
    if state.is_main_process:
        previous = json.loads((req.output / RUN_CONFIG).read_text()).get("base_fingerprint") \
            if (req.output / RUN_CONFIG).is_file() else None
        if previous and base.fingerprint and previous != base.fingerprint and not req.overwrite:
            console.print(f"[yellow]warning: the base weights differ from those this run started on (fingerprint "
                          f"{previous[:12]} -> {base.fingerprint[:12]}: converted or compressed differently); "
                          "its stages are trained again on these")
        if req.overwrite and (req.output / RUN_CONFIG).is_file():
            shutil.rmtree(req.output)
        req.output.mkdir(parents=True, exist_ok=True)
        (req.output / RUN_CONFIG).write_text(json.dumps(settings, indent=2))
    state.wait_for_everyone()
    per_seed: dict[int, dict] = {}
    for seed in req.seeds:
        run_dir = req.output if len(req.seeds) == 1 else req.output / f"seed-{seed}"
        rt = Runtime.create(run_dir, device=req.device, progress=req.progress)
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

