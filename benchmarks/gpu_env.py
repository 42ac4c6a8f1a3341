"""Run a module or script as on the GPU machine: the packages its image lacks (and that gpu_run.sh does not
carry) cannot be imported, so a dry run on a full CPU environment fails where the GPU run would.

    python benchmarks/gpu_env.py -m mops.cli.app train ...
    python benchmarks/gpu_env.py benchmarks/train_step.py ...
"""

from __future__ import annotations

import importlib.util
import runpy
import sys

# Not in the GPU image (device/KINDS.md, 2026-11) and not carried: Flower, datasets, compression, ROUGE.
ABSENT = ("flwr", "ray", "datasets", "llmcompressor", "bitsandbytes", "rouge_score", "nltk", "torchao")


class _Absent:
    """A meta-path finder that refuses the packages in ABSENT, as a missing install does."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} (absent on the GPU machine)", name=name)
        return None


def _find_spec(name: str, package: str | None = None, _real=importlib.util.find_spec):
    """`importlib.util.find_spec` as it answers where ABSENT is not installed (libraries probe with it)."""
    return None if name.split(".")[0] in ABSENT else _real(name, package)


def main() -> None:
    importlib.util.find_spec = _find_spec
    sys.meta_path.insert(0, _Absent())
    args = sys.argv[1:]
    if args[:1] == ["-m"]:
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    main()
