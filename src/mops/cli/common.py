"""Helpers shared by the CLI commands (their settings' options come from the configs: `cli/options.py`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from mops.errors import ConfigError
from mops.progress import console  # re-exported: every command prints through it

JsonOpt = typer.Option(False, "--json", help="Print the results as JSON on stdout.")


def load_base_for(model: str, compress: str | None, adapter: Path | None, data: str = "dolly", seed: int = 0,
                  dtype: str = "auto", device: str = "auto"):
    """The base to score or generate with: with an adapter trained on a compressed base, that same base (its
    pruning and calibration data, samples, length and seed, rebuilt or read from the cache), or an error when
    `--compress` asks for another one; otherwise `model` compressed as `--compress` says."""
    from mops.compression.config import CompressionConfig, compression_from
    from mops.compression.load import load_model
    from mops.models.report import compression_settings
    from mops.tuners.mops.adapter_io import saved_base_identity

    wanted = compression_from(compress, data, seed)
    saved = saved_base_identity(adapter).get("compression_settings") if adapter is not None else None
    if saved:
        trained = CompressionConfig(**saved)
        if compress is None:
            console.print(f"[dim]adapter {adapter} was trained on {model} compressed as {trained.spec} "
                          f"(calibration {trained.key}): using that base")
            wanted = trained
        else:
            calibration = {k: v for k, v in saved.items() if k.startswith("calib_")}
            wanted = CompressionConfig.parse(compress, **calibration)
            if compression_settings({"config": wanted.to_dict()}) != saved:
                raise ConfigError(f"--compress {compress}: adapter {adapter} was trained on {model} compressed as "
                                  f"{trained.spec} ({trained.key}); leave --compress out to use that base")
    return load_model(model, wanted, dtype=dtype, device=device)


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
