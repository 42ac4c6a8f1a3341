"""Where mops keeps converted models and other caches (`MOPS_HOME`, default `~/.cache/mops`)."""

from __future__ import annotations

import os
from pathlib import Path


def mops_home() -> Path:
    """The cache root; created on first use."""
    root = Path(os.environ.get("MOPS_HOME") or Path.home() / ".cache" / "mops").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def cache_dir(kind: str) -> Path:
    """A sub-folder of the cache root for one kind of artefact (e.g. ``models``)."""
    path = mops_home() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path
