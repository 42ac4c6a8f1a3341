"""The architecture as the README states it: layers that only look down, one declaration per setting, one
registry of methods. Read from the source (every import, including those inside functions and TYPE_CHECKING
blocks) and from the dataclasses, not from a list kept by hand."""

from __future__ import annotations

import ast
import dataclasses
import re
import sys
from pathlib import Path

import pytest

from mops.data.config import DataConfig
from mops.federated.config import NOT_FEDERATED, FederatedRun, FederationConfig
from mops.models.config import ModelConfig
from mops.training.config import TrainConfig
from mops.training.stages import SCOPES, depends_on, stage_settings
from mops.tuners.mops.config import MoPConfig
from mops.tuners.registry import METHODS

SRC = Path(__file__).resolve().parents[1] / "src" / "mops"
README = Path(__file__).resolve().parents[1] / "README.md"
# Bottom to top; a module may import from its own layer and the layers below it. The top-level modules
# (errors, paths, progress, provenance, settings) are the core every layer may use.
LAYERS = ["core", "data", "models", "compression", "tuners", "evaluation", "reports", "training", "federated",
          "reproduce", "cli"]
CORE = {"errors", "paths", "progress", "provenance", "settings", "__init__"}


def _layer(module: str) -> str:
    """mops.training.loop -> training; mops.errors -> core."""
    parts = module.split(".")
    return "core" if len(parts) < 2 or parts[1] in CORE else parts[1]


def import_edges() -> list[tuple[str, str, str]]:
    """(file, importing layer, imported module) for every mops import in src/mops."""
    edges = []
    for file in SRC.rglob("*.py"):
        rel = file.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mops":
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "mops"]
            else:
                continue
            edges += [(str(rel), _layer(module), t) for t in targets]
    return edges


def test_every_package_is_a_stated_layer() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    modules = {p.stem for p in SRC.glob("*.py")}
    assert packages == set(LAYERS) - {"core"}
    assert modules <= CORE
    readme = README.read_text()
    assert " → ".join(LAYERS[1:]) in readme  # the README's architecture section states this order


def test_imports_only_look_down() -> None:
    upward = [f"{file} ({layer}) imports {target}" for file, layer, target in import_edges()
              if LAYERS.index(_layer(target)) > LAYERS.index(layer)]
    assert upward == []


def test_no_package_level_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for _, layer, target in import_edges():
        if _layer(target) != layer:
            graph.setdefault(layer, set()).add(_layer(target))

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph.get(start, ()))

    assert [layer for layer in graph if reaches(layer, layer, set())] == []


def test_tuners_import_nothing_above_and_nobody_imports_cli() -> None:
    edges = import_edges()
    forbidden = {"training", "compression", "federated", "reproduce", "reports", "cli"}
    assert [e for e in edges if e[1] == "tuners" and _layer(e[2]) in forbidden] == []
    assert [e for e in edges if e[1] != "cli" and _layer(e[2]) == "cli"] == []


def test_the_import_check_catches_an_upward_import(tmp_path: Path, monkeypatch) -> None:
    """The check reads real files: an import of training from tuners is reported."""
    fake = tmp_path / "mops"
    (fake / "tuners").mkdir(parents=True)
    (fake / "tuners" / "bad.py").write_text("def f():\n    from mops.training.loop import train_steps\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert [(layer, t) for _, layer, t in import_edges()] == [("tuners", "mops.training.loop")]


def test_no_method_name_tests_outside_the_registry() -> None:
    """`if method == "lora"` chains are gone: method behaviour comes from `tuners/registry.py` (peft_baselines
    builds peft's config per adapter type, which is what it is for)."""
    names = "|".join(METHODS)
    pattern = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']""")
    found = [f"{f.relative_to(SRC)}: {line.strip()}" for f in SRC.rglob("*.py") if f.name not in ("registry.py", "peft_baselines.py")
             for line in f.read_text().splitlines() if pattern.search(line)]
    assert found == []


def test_each_setting_is_declared_once() -> None:
    """No setting's name in two config dataclasses (fields a run fills itself, like the tasks an adapter was
    trained on, are not settings); the federated config nests the central ones."""
    classes = [ModelConfig, DataConfig, MoPConfig, TrainConfig, FederationConfig]
    names = [f.name for cls in classes for f in dataclasses.fields(cls) if not f.metadata.get("set_by_run")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
    nested = {f.name: f.type for f in dataclasses.fields(FederatedRun)}
    assert {k: nested[k] for k in ("model", "data", "mop", "train", "federation")} == {
        "model": "ModelConfig", "data": "DataConfig", "mop": "MoPConfig", "train": "TrainConfig",
        "federation": "FederationConfig"}
    # what a federated run does not read are real fields of the config it nests
    assert NOT_FEDERATED <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_every_field_has_help_and_a_known_stage_scope() -> None:
    for cls in (ModelConfig, DataConfig, MoPConfig, TrainConfig, FederationConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            assert f.metadata.get("stage", "all") in SCOPES


@pytest.mark.parametrize("stage, present, absent", [
    ("recovery", {"recovery_lr", "num_experts", "seed"}, {"lr", "steps", "gate_lr", "lora_r", "checkpoint_every"}),
    ("gate_pretrain", {"gate_pretrain_lr", "recovery_lr"}, {"gate_lr", "steps", "lora_r"}),
    ("baseline", {"steps", "method_lr"}, {"gate_lr", "gate_pretrain_steps", "lora_r", "lr", "baseline_lr"}),
    ("mops", {"steps", "gate_lr", "gate_pretrain_steps", "gate_mode"}, {"lora_r", "peft_targets"}),
    ("ia3", {"peft_targets", "steps"}, {"lora_r", "gate_lr"}),
    ("lora_mops", {"lora_r", "gate_lr", "gate_pretrain_steps"}, {"checkpoint_every"}),
])
def test_stage_dependencies_come_from_field_metadata(stage, present, absent) -> None:
    settings = stage_settings(stage, MoPConfig(), TrainConfig())
    assert present <= set(settings) and not absent & set(settings)


def test_stage_keys_use_each_methods_own_rate() -> None:
    train = TrainConfig(lr=0.1, baseline_lr=0.02, lora_lr=3e-3)
    assert stage_settings("baseline", train)["method_lr"] == 0.02
    assert stage_settings("mops", train)["method_lr"] == 0.1
    assert stage_settings("lora", train)["method_lr"] == 3e-3
    assert not depends_on("recovery", "lr") and depends_on("gate_pretrain", "gate_pretrain")
