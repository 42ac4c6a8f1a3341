"""Where mops keeps converted models and other caches (`MOPS_HOME`, default `~/.cache/mops`), and the name of
a run folder's settings record."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

RUN_CONFIG = "run_config.json"  # a `mops train` folder's settings (beside seed-N/ for several seeds)


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


@contextmanager
def atomic_folder(target: Path, done_marker: str) -> Iterator[Path]:
    """Yield a temporary sibling of `target` to fill; on success rename it into place.

    `done_marker` is a file that only a finished folder has. If another process finished `target` first,
    its folder is kept and ours is discarded, so concurrent builders never leave a half-written cache.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / done_marker).is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
