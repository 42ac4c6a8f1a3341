"""Stages of the paper's pipeline on disk: which settings each stage depends on, its key, and the stage store.

Which settings a stage depends on is metadata on the config fields (``metadata["stage"]``), read here:

    all (default)   every stage: base, data, prompt slots, seeds, recovery settings ...
    never           no stage (checkpoint_every)
    main            the method stages (steps, eval_every), not recovery or gate pretraining
    lr              a method's learning rate: the stage keys the rate its registry entry resolves, not the fields
    gate            stages of methods that use the gate (gate_lr, gate_mode, gate_noise ...)
    gate_pretrain   gate pretraining and the methods that use the gate
    lora / peft     methods that attach a LoRA adapter / any peft adapter (`PEFT_KINDS` name the types)

A finished stage is kept in ``run_dir/stages/<name>`` (adapter state, result.json, key) and copied to
MOPS_HOME/stages/<name>/<key>, so another run with the same settings (another experiment's baseline, a re-run
of a grid) reuses it; a stage folder or checkpoint made under another key is trained again, never relabelled.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from mops.errors import ConfigError
from mops.paths import atomic_folder, cache_dir
from mops.progress import console
from mops.tuners.peft_baselines import PEFT_KINDS
from mops.tuners.registry import METHODS

SHARED_STAGES = ("recovery", "gate_pretrain")
SCOPES = ("all", "never", "main", "lr", "gate", "gate_pretrain", "lora", "peft")
KEY_FILE = "key"  # in a stage folder and its checkpoint folder: the stage key they were made under
# Revision of the method stages: 2 = every method starts from a copy of the shared state. Before it, the
# snapshot aliased the fp32 parameters, so each method started where the previous one of its run ended (MoPs
# from the baseline's trained prompts); stages stored under revision 1 are never reused.
METHOD_REVISION = 2


def depends_on(stage: str, scope: str) -> bool:
    """Whether stage `stage` (a shared stage or a method) depends on settings of `scope`."""
    if scope not in SCOPES:
        raise ConfigError(f"unknown stage scope {scope!r} in a config field's metadata; known: {SCOPES}")
    method = METHODS.get(stage)
    if scope == "all":
        return True
    if scope == "gate_pretrain" and stage == "gate_pretrain":
        return True
    if method is None or scope in ("never", "lr"):
        return False
    if scope in PEFT_KINDS:  # settings of one peft adapter type
        return method.peft == scope
    return {"main": True, "gate": method.uses_gate, "gate_pretrain": method.uses_gate, "peft": method.peft is not None}[scope]


def stage_settings(stage: str, *configs: object) -> dict:
    """The settings of `configs` (MoPConfig, TrainConfig) that stage `stage` depends on; a method stage adds
    its resolved learning rate."""
    settings = {f.name: getattr(cfg, f.name) for cfg in configs for f in fields(cfg)
                if depends_on(stage, f.metadata.get("stage", "all"))}
    if stage in METHODS:
        train = next(c for c in configs if hasattr(c, "lora_lr"))
        settings["method_lr"] = METHODS[stage].lr(train)
    return settings


def stage_key(stage: str, identity: dict, *configs: object) -> str:
    """Digest of everything stage `stage` depends on: `identity` (base, fingerprint, data tokens, length,
    template) and its settings."""
    payload = {"stage": stage, **identity, "settings": stage_settings(stage, *configs)}
    if stage not in SHARED_STAGES:
        payload["revision"] = METHOD_REVISION
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _read_key(folder: Path) -> str | None:
    file = folder / KEY_FILE
    return file.read_text().strip() if file.is_file() else None


class StageStore:
    """Runs each stage once per key; afterwards loads its stored state and result instead.

    `get_state` / `set_state`: the trainable state a stage leaves behind (prompts, gate, peft weights).
    """

    def __init__(self, run_dir: Path, accelerator, get_state: Callable[[], dict], set_state: Callable[[dict], None]):
        self.run_dir, self.accelerator = run_dir, accelerator
        self.get_state, self.set_state = get_state, set_state

    def folder(self, name: str) -> Path:
        return self.run_dir / "stages" / name

    def checkpoints(self, name: str) -> Path:
        return self.run_dir / "checkpoints" / name

    def run(self, name: str, key: str, train: Callable[[], dict]) -> dict:
        """The result of stage `name` under `key`: from this run folder, from the store, or trained now."""
        folder, checkpoints = self.folder(name), self.checkpoints(name)
        stored = cache_dir("stages") / name / key
        main = self.accelerator.is_main_process
        if main:
            for path in (folder, checkpoints):
                if path.is_dir() and _read_key(path) != key:
                    if any(p.name != KEY_FILE for p in path.iterdir()):
                        console.print(f"[yellow]{path} was made with other settings: stage {name} starts again")
                    shutil.rmtree(path)
            if not (folder / "result.json").is_file() and (stored / "result.json").is_file():
                shutil.copytree(stored, folder, dirs_exist_ok=True)  # the same stage of an earlier run
                (folder / KEY_FILE).write_text(key)
        self.accelerator.wait_for_everyone()
        if (folder / "result.json").is_file():
            self.set_state(load_file(str(folder / "adapter.safetensors"), device=str(self.accelerator.device)))
            return json.loads((folder / "result.json").read_text())
        if main:
            checkpoints.mkdir(parents=True, exist_ok=True)
            (checkpoints / KEY_FILE).write_text(key)
        t0 = time.perf_counter()
        result = {**train(), "seconds": round(time.perf_counter() - t0, 1)}
        if main:
            folder.mkdir(parents=True, exist_ok=True)
            save_file(self.get_state(), str(folder / "adapter.safetensors"))
            (folder / KEY_FILE).write_text(key)
            (folder / "result.json").write_text(json.dumps(result, indent=2))  # last: marks the stage finished
            if not stored.is_dir():
                with atomic_folder(stored, "result.json") as tmp:
                    shutil.copytree(folder, tmp, dirs_exist_ok=True)
        self.accelerator.wait_for_everyone()
        return result

    def finished_state(self, name: str) -> dict[str, torch.Tensor]:
        """The stored state of this run's finished stage `name` (for a method that trains on top of it)."""
        file = self.folder(name) / "adapter.safetensors"
        if not file.is_file():
            raise ConfigError(f"stage {name} has not finished in {self.run_dir}: put {name} earlier in --method")
        return load_file(str(file), device=str(self.accelerator.device))
