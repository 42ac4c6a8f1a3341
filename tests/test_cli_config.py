"""Options derived from the config dataclasses, and `--config` files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import typer

from mops.cli.app import app
from mops.cli.federate_cmd import SECTIONS as FEDERATE_SECTIONS
from mops.cli.train_cmd import DEMO, train_sections
from mops.data.config import DataConfig
from mops.federated.config import CPU_PRESET, NOT_FEDERATED, FederationConfig
from mops.models.config import ModelConfig
from mops.training.config import TrainConfig
from mops.tuners.mops.config import MoPConfig
from tests.test_cli import run_cli

COMMAND = typer.main.get_command(app)


def options(name: str) -> dict[str, object]:
    """Option name -> its click parameter, of command `name`."""
    return {p.name: p for p in COMMAND.commands[name].params}


def field_defaults(cls: type, preset: dict | None = None) -> dict[str, object]:
    return {f.name: (preset or {}).get(f.name, f.default) for f in dataclasses.fields(cls)
            if not f.metadata.get("set_by_run")}


@pytest.mark.parametrize("command, classes, presets, left_out", [
    ("train", (ModelConfig, DataConfig, MoPConfig, TrainConfig), {}, set()),
    ("demo", (ModelConfig, DataConfig, MoPConfig, TrainConfig), DEMO, set()),
    ("federate", (ModelConfig, DataConfig, MoPConfig, TrainConfig, FederationConfig), CPU_PRESET, NOT_FEDERATED),
])
def test_every_setting_is_an_option_with_the_dataclass_default_and_help(command, classes, presets, left_out) -> None:
    params = options(command)
    for cls in classes:
        section = {DataConfig: "data", TrainConfig: "train"}.get(cls, "")
        for name, default in field_defaults(cls, presets.get(section)).items():
            if name in left_out:
                assert name not in params
                continue
            field = next(f for f in dataclasses.fields(cls) if f.name == name)
            assert params[name].default == default, f"{command} --{name}"
            assert params[name].help == field.metadata["help"]


def test_help_shows_the_dataclass_defaults() -> None:
    out = run_cli("train", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "MoPConfig (mop)" in text and "TrainConfig (train)" in text
    for flag in ("--num-experts", "--gate-lr", "--gate-balance", "--lora-r", "--cache-activations", "--config"):
        assert flag in text
    assert "[default: 0.0001]" in text and "[default: 7]" in text


def test_federated_defaults_are_the_central_fields_with_the_cpu_preset() -> None:
    sections = {s.name: s for s in FEDERATE_SECTIONS}
    assert sections["train"].default(next(f for f in dataclasses.fields(TrainConfig) if f.name == "recovery_lr")) == 1e-2
    assert sections["train"].default(next(f for f in dataclasses.fields(TrainConfig) if f.name == "lr")) == TrainConfig().lr
    assert {s.name for s in train_sections()} == {"model", "data", "mop", "train"}


def test_config_file_values_and_command_line_precedence(tmp_path: Path) -> None:
    config = tmp_path / "stats.yaml"
    config.write_text("data:\n  total: 70\nseed: 3\n")
    out = run_cli("data", "stats", "--config", str(config), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    assert sum(t["train"] + t["test"] for t in json.loads(out.stdout)["tasks"].values()) == 70
    override = run_cli("data", "stats", "--config", str(config), "--total", "140", "--json")
    assert sum(t["train"] + t["test"] for t in json.loads(override.stdout)["tasks"].values()) == 140
    toml = tmp_path / "stats.toml"
    toml.write_text("total = 35\n")
    out = run_cli("data", "stats", "--config", str(toml), "--json")
    assert sum(t["train"] + t["test"] for t in json.loads(out.stdout)["tasks"].values()) == 35


@pytest.mark.parametrize("text, suffix, message", [
    ("train:\n  stpes: 3\n", ".yaml", "train.stpes is not a setting of this command"),
    ("learning_rate: 0.1\n", ".yaml", "'learning_rate' is not a setting of this command"),
    ("train:\n  steps: -1\n", ".yaml", "TrainConfig.steps must be >= 0"),
    ("train:\n  steps: many\n", ".yaml", "steps: 'many' is not a valid integer"),
    ("- 1\n- 2\n", ".yaml", "expected a mapping"),
    ("steps = \n", ".toml", "not valid TOML"),
])
def test_bad_config_files_are_one_error_line(tmp_path: Path, tiny_model_dir: Path, text, suffix, message) -> None:
    config = tmp_path / f"run{suffix}"
    config.write_text(text)
    out = run_cli("train", "--model", str(tiny_model_dir), "--config", str(config), "-o", str(tmp_path / "run"))
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr
    assert config.name in out.stderr or "TrainConfig" in message
    assert not (tmp_path / "run").exists()
