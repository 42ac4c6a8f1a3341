"""Where numbers come from: library versions, threads and the device, recorded beside every result."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from importlib import metadata

import torch

from mops import __version__


def command_line() -> str:
    """The `mops` command line of this process, shell-quoted so that it can be pasted back to rerun."""
    return shlex.join(["mops", *sys.argv[1:]])


def versions() -> dict:
    """Library versions, CPU threads and the device the numbers come from."""
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or platform.machine()})"
    libs = {name: metadata.version(name) for name in ("transformers", "peft", "flwr")}
    return {"mops": __version__, "torch": torch.__version__, **libs, "python": sys.version.split()[0],
            "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
