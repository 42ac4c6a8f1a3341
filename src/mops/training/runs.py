"""One training run as data (`RunRequest`) and its execution (`execute`): load the base once, then for each
seed train the requested methods from shared frozen parts. Used by `mops train`, `mops demo` and
`mops reproduce`."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from mops.compression.config import compression_from
from mops.data.config import DataConfig
from mops.errors import ConfigError
from mops.evaluation.results import RunResult
from mops.models.config import ModelConfig
from mops.paths import RUN_CONFIG
from mops.progress import console
from mops.settings import changed_settings
from mops.reports.run_report import comparison_rows, seed_summary, summary_markdown
from mops.reports.tables import rich_table
from mops.training.config import TrainConfig
from mops.tuners.mops.config import MoPConfig


@dataclass
class RunRequest:
    """One `mops train` run: its settings (the validated configs) and what the run is (methods, seeds, folder).

    `mop.tasks` / `mop.init_seed` and `train.seed` are filled per run from the data and each seed."""

    model: ModelConfig
    data: DataConfig
    mop: MoPConfig
    train: TrainConfig
    methods: list[str]
    seeds: list[int]
    output: Path
    progress: bool = True
    experiment_log: Optional[Path] = None
    note: str = ""
    overwrite: bool = False

    @classmethod
    def from_settings(cls, settings: dict[str, dict], **run: Any) -> "RunRequest":
        """From {section: {field: value}} (the CLI's options, a grid cell); every setting is validated here."""
        return cls(model=ModelConfig(**settings.get("model", {})), data=DataConfig(**settings.get("data", {})),
                   mop=MoPConfig(**settings.get("mop", {})), train=TrainConfig(**settings.get("train", {})), **run)

    def settings(self) -> dict:
        """What decides the run's numbers, as JSON values (what `run_config.json` must match on a re-run).
        Methods are not among them: a re-run may add methods; each method's stage is keyed by its own settings."""
        raw = {**self.model.to_dict(), **self.data.to_dict(), "seeds": self.seeds, "mop": self.mop.to_dict(),
               "train": self.train.to_dict()}
        return json.loads(json.dumps(raw, default=str))


@dataclass
class RunOutcome:
    """Each seed's results and, with several seeds, the paired summary (`summary.json`)."""

    per_seed: dict[int, RunResult]
    summary: dict


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
        stored = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{file}: damaged ({err.msg}); use a new --output, or --overwrite to replace the run") from None
    diffs = changed_settings(stored, req.settings())
    if diffs:
        raise ConfigError(f"{folder} holds a run with other settings ({'; '.join(diffs)}): its results would be "
                          "relabelled. Use a new --output, or --overwrite to replace that run")


def execute(req: RunRequest) -> RunOutcome:
    """Load once; for each seed, train the methods (from shared stages) into its run folder.

    One seed writes into `req.output`; several write `req.output/seed-N` plus `summary.{json,md}` (paired
    gains, mean +- std). The data selection and split use the first seed, so every seed sees the same test set.
    """
    from accelerate import PartialState

    from mops.compression.load import load_model
    from mops.data import load_splits
    from mops.models.loading import resolve_device, resolve_dtype
    from mops.training.loop import Runtime
    from mops.training.pipeline import Pipeline, run_methods
    from mops.tuners.mops.model import MoPModel

    # Every setting is checked before anything is loaded or written: a refused run leaves no trace.
    compression = compression_from(req.model.compress, req.data.data, req.seeds[0])
    resolve_dtype(req.model.dtype, resolve_device(req.model.device))
    d = req.data
    splits = load_splits(d.data, d.tasks, d.total, seed=req.seeds[0], skip_invalid=d.skip_invalid)
    mop = replace(req.mop, tasks=splits.tasks)
    check_run_folder(req)
    if splits.skipped:
        console.print(f"[yellow]skipped {len(splits.skipped)} invalid records; first: {splits.skipped[0]}")
    state = PartialState(cpu=req.model.device == "cpu")  # this process's device (one GPU each under accelerate launch)
    base = load_model(req.model.model, compression, dtype=req.model.dtype, device=str(state.device))
    replace(mop).validate_for(base.model.config.num_hidden_layers)
    settings = {**req.settings(), "methods": req.methods, "output": str(req.output),
                "base_fingerprint": base.fingerprint}  # recorded, not compared: a change retrains every stage
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
    per_seed: dict[int, RunResult] = {}
    label = f"{d.data}, {req.model.model}{'+' + base.compression if base.compression else ''}"
    for seed in req.seeds:
        run_dir = req.output if len(req.seeds) == 1 else req.output / f"seed-{seed}"
        rt = Runtime.create(run_dir, device=req.model.device, progress=req.progress)
        model = MoPModel(base, replace(mop, init_seed=seed))
        pipe = Pipeline(model, splits, replace(req.train, seed=seed), run_dir, rt, d.max_length, d.template)
        per_seed[seed] = run_methods(pipe, req.methods)
        rt.logger.close()
        model.unload()
        if rt.is_main and req.progress:
            headers, rows = comparison_rows(per_seed[seed], req.methods)
            console.print(rich_table(f"test PPL ({label}, seed {seed})", headers, rows))
            console.print(f"results: {run_dir}/results.md, figures: {run_dir}/*.png, "
                          f"adapters: {', '.join(f'{run_dir}/{m}/adapter' for m in req.methods)}")
    if req.experiment_log is not None and rt.is_main:
        from mops.reports.experiment_log import append_record, experiment_record

        append_record(req.experiment_log, experiment_record(req.output.name, req.note, settings, per_seed, req.output))
    summary = seed_summary(per_seed, req.methods) if len(req.seeds) > 1 else {}
    if summary and rt.is_main:
        (req.output / "summary.json").write_text(json.dumps(summary, indent=2))
        (req.output / "summary.md").write_text(summary_markdown(summary))
        if req.progress:
            console.print(summary_markdown(summary), highlight=False)
    return RunOutcome(per_seed, summary)
