"""Metrics to a JSONL file and TensorBoard (main process only)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class RunLogger:
    """`log(record)` appends a JSON line; numeric fields also go to TensorBoard as ``stage/name``."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            stage, step = record.get("stage", "run"), int(record.get("step", 0))
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "time"):
                    self.writer.add_scalar(f"{stage}/{key}", value, step)

    def forget_after(self, stage: str, step: int) -> None:
        """Drop the JSONL records of `stage` (and its evals) after `step`: a resumed stage logs them again."""
        if not self.enabled or not self.path.is_file():
            return
        def stale(line: str) -> bool:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return True  # a line cut short by a kill
            return record.get("stage") in (stage, f"{stage}_eval") and record.get("step", 0) > step

        lines = self.path.read_text().splitlines(keepends=True)
        keep = [line for line in lines if not stale(line)]
        if len(keep) != len(lines):
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(keep))
            tmp.replace(self.path)

    def figure(self, tag: str, fig: Any, step: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_figure(tag, fig, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
