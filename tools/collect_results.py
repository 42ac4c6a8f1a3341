"""Copy the small, reviewable artefacts of finished runs into results/ (no checkpoints, caches, TensorBoard).

    python tools/collect_results.py runs/demo-dolly results/demo-dolly "mops demo -o runs/demo-dolly"
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

KEEP = ("results.md", "results.json", "run_config.json", "summary.md", "summary.json", "gate_pretrained.png",
        "gate_final.png", "loss.png")


def collect(run: Path, target: Path, command: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in KEEP:
        if (run / name).is_file():
            shutil.copy2(run / name, target / name)
    (target / "COMMAND.md").write_text(f"Produced by:\n\n```bash\n{command}\n```\n")


if __name__ == "__main__":
    collect(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
