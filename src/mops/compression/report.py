"""The compression report that sits in every compressed model folder (``mops_compression.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from mops.errors import ModelLoadError

REPORT_FILE = "mops_compression.json"


def read_compression_report(folder: Path) -> dict:
    """The report of a compressed folder; ``{}`` for any other model folder or a hub id."""
    file = Path(folder) / REPORT_FILE
    if not file.is_file():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{file}: damaged compression report ({err}); delete the folder to rebuild it") from err


def write_compression_report(folder: Path, report: dict) -> None:
    (Path(folder) / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
