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

    def figure(self, tag: str, fig: Any, step: int) -> None:
        if self.enabled and self.writer is not None:
            self.writer.add_figure(tag, fig, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
