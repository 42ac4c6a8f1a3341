"""One entry point for data: bundled names, local files/folders, or HF dataset ids -> train/test splits."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Sequence

from mops.data.example import Example
from mops.errors import ConfigError, DataError
from mops.data.readers import LoadResult, read_hf_dataset, read_path
from mops.data.selection import group_by_task, select_balanced, train_test_split
from mops.data.tasks import PAPER_TASKS, PAPER_TOTAL

BUNDLED = ("dolly", "sni")


def bundled_path(name: str) -> Path:
    """Path of a bundled subset (``dolly`` or ``sni``) inside the installed package."""
    return Path(str(files("mops.data").joinpath("bundled", f"{name}.jsonl.gz")))


def read_examples(spec: str, skip_invalid: bool = False) -> LoadResult:
    """`spec`: ``dolly`` / ``sni`` (bundled), a local file or folder, or a HF dataset id."""
    if spec in BUNDLED:
        return read_path(bundled_path(spec), skip_invalid)
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")) or spec.endswith((".json", ".jsonl", ".gz")):
        return read_path(path, skip_invalid)
    return read_hf_dataset(spec, skip_invalid=skip_invalid)


def resolve_tasks(spec: str, tasks: Sequence[str] | str | None) -> list[str] | None:
    """Task list: explicit names, a paper alias (``dolly`` / ``sni``), or the paper list for a bundled spec."""
    if isinstance(tasks, str):
        tasks = list(PAPER_TASKS[tasks]) if tasks in PAPER_TASKS else [t for t in tasks.split(",") if t]
    if tasks is None and spec in PAPER_TASKS:
        return list(PAPER_TASKS[spec])
    return list(tasks) if tasks is not None else None


@dataclass
class DataSplits:
    """Train and test examples plus the task list (its order fixes the expert <- task assignment)."""

    train: list[Example]
    test: list[Example]
    tasks: list[str]
    skipped: list[str]

    def summary(self) -> dict[str, dict[str, int]]:
        train, test = group_by_task(self.train), group_by_task(self.test)
        return {t: {"train": len(train.get(t, [])), "test": len(test.get(t, []))} for t in self.tasks}


def load_splits(
    spec: str = "dolly",
    tasks: Sequence[str] | str | None = None,
    total: int | None = PAPER_TOTAL,
    test_fraction: float = 0.1,
    seed: int = 0,
    skip_invalid: bool = False,
) -> DataSplits:
    """Read, select (balanced, de-duplicated, seeded) and split 90/10 by default, as in the paper."""
    if total is not None and total < 1:
        raise ConfigError(f"--total must be >= 1 (examples selected before the split), got {total}")
    loaded = read_examples(spec, skip_invalid)
    if not loaded.examples:
        why = f"all {len(loaded.skipped)} records are invalid" if loaded.skipped else "it holds no records"
        raise DataError(f"{spec}: no examples ({why})")
    task_list = resolve_tasks(spec, tasks)
    selected = select_balanced(loaded.examples, task_list, total, seed)
    train, test = train_test_split(selected, test_fraction, seed)
    names = task_list or sorted({ex.task for ex in selected})
    splits = DataSplits(train=train, test=test, tasks=names, skipped=loaded.skipped)
    short = [t for t, n in splits.summary().items() if n["test"] == 0 or n["train"] == 0]
    if short:
        counts = ", ".join(f"{t}: {sum(splits.summary()[t].values())}" for t in short[:5])
        raise DataError(f"{spec}: task(s) with too few examples for a train and a test split ({counts} selected; "
                        f"each task needs >= 2): add data, raise --total ({total}) or leave them out with --tasks")
    return splits
