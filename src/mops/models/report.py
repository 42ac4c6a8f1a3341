"""The compression report a compressed model folder carries (``mops_compression.json``): read when loading
any folder, written by `mops.compression`."""

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


def compression_settings(report: dict) -> dict | None:
    """The settings that decide a compressed folder's weights: its CompressionConfig, calibration fields only
    for the methods that read calibration data (SparseGPT, Wanda). None for an uncompressed folder."""
    config = report.get("config")
    if not config:
        return None
    if config.get("prune") in ("sparsegpt", "wanda"):
        return dict(config)
    return {k: v for k, v in config.items() if not k.startswith("calib_")}


def write_compression_report(folder: Path, report: dict) -> None:
    (Path(folder) / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
