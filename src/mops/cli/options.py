"""Command-line options derived from the config dataclasses, and `--config FILE` for every command.

Each field of a section's dataclass becomes one option, ``--field-name`` (plus the field's ``metadata["flags"]``),
with the field's type, default and help text; nothing here repeats a setting. Fields marked ``set_by_run`` are
no options. A command may give some fields
other defaults (its preset: `mops demo` and `mops federate` run at CPU size) and leave fields out (those the
command sets itself, e.g. the seed of `mops train --seeds`).

`--config run.yaml` (YAML, TOML or JSON) supplies any option of the command by the same names, flat
(``steps: 30``) or under its section (``train: {steps: 30}``); options given on the command line win.

Hand-written because typer builds options from a function signature only: this generates that signature from
the dataclasses (litgpt and LightningCLI do the same with jsonargparse, which would replace our typer/rich CLI).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import tomllib
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import click
import typer
import yaml

from mops.errors import ConfigError
from mops.settings import unwrap_optional


@dataclass(frozen=True)
class Section:
    """The options of one config dataclass: `name` is its section in config files (model, data, mop, train ...)."""

    name: str
    cls: type
    exclude: frozenset[str] = frozenset()
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def only(cls, name: str, config: type, *keep: str, **defaults: Any) -> "Section":
        """The options of `keep` fields of `config` only (a command that needs a few of its settings)."""
        unknown = set(keep) - {f.name for f in dataclasses.fields(config)}
        if unknown:
            raise TypeError(f"{config.__name__} has no field(s) {sorted(unknown)}")
        return cls(name, config, frozenset(f.name for f in dataclasses.fields(config)) - set(keep), defaults)

    def fields(self) -> list[dataclasses.Field]:
        """The fields that are options: not excluded, and not filled by the run itself (``set_by_run``: the
        tasks from the data, seeds from --seed(s), the gate from the method)."""
        return [f for f in dataclasses.fields(self.cls)
                if f.name not in self.exclude and not f.metadata.get("set_by_run")]

    def default(self, f: dataclasses.Field) -> Any:
        if f.name in self.defaults:
            return self.defaults[f.name]
        if f.default is MISSING:
            raise TypeError(f"{self.cls.__name__}.{f.name} has no plain default: exclude it from the CLI")
        return f.default


def _cli_type(tp: Any) -> Any:
    """A field's type as typer reads it: ``int | None`` -> Optional[int]; scalars only."""
    base, optional = unwrap_optional(tp)
    if base not in (int, float, str, bool):
        raise TypeError(f"unsupported option type {tp}")
    return Optional[base] if optional else base


def _option(section: Section, f: dataclasses.Field, hint: Any) -> inspect.Parameter:
    flag = f.name.replace("_", "-")
    names = [f"--{flag}/--no-{flag}"] if hint is bool else [f"--{flag}", *f.metadata.get("flags", ())]
    option = typer.Option(section.default(f), *names, help=f.metadata.get("help", ""),
                          rich_help_panel=f"{section.cls.__name__} ({section.name})")
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=_cli_type(hint))


def _read_config_file(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            data = yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"--config {path}: not valid {path.suffix.lstrip('.').upper() or 'YAML'} ({err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of setting names to values at the top level")
    return data


def config_values(path: Path, sections: tuple[Section, ...], names: set[str]) -> dict[str, Any]:
    """The settings a config file gives, by option name; unknown names are refused with the file named."""
    sections_by_name = {s.name: {f.name for f in s.fields()} for s in sections}
    values: dict[str, Any] = {}
    for key, value in _read_config_file(path).items():
        key = key.replace("-", "_")
        if key in sections_by_name and isinstance(value, dict):
            for inner, v in value.items():
                inner = inner.replace("-", "_")
                if inner not in sections_by_name[key]:
                    raise ConfigError(f"--config {path}: {key}.{inner} is not a setting of this command; "
                                      f"{key} has {', '.join(sorted(sections_by_name[key]))}")
                values[inner] = v
        elif key in names:
            values[key] = value
        else:
            raise ConfigError(f"--config {path}: {key!r} is not a setting of this command; known: "
                              f"{', '.join(sorted(names))}")
    return values


def config_command(*sections: Section) -> Callable:
    """Decorator: the command gets one option per field of `sections` and `--config`; the wrapped function
    receives its own parameters plus ``settings``: {section name: {field: value}}."""

    def wrap(func: Callable) -> Callable:
        hints = typing.get_type_hints(func)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(func).parameters.values() if p.name != "settings"]
        generated = []
        for section in sections:
            section_hints = typing.get_type_hints(section.cls)
            generated += [_option(section, f, section_hints[f.name]) for f in section.fields()]
        names = [p.name for p in own + generated]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise TypeError(f"{func.__name__}: options {duplicated} are declared twice")

        def load(ctx: click.Context, param: click.Parameter, value: Optional[Path]) -> Optional[Path]:
            if value is None:
                return None
            values = config_values(value, sections, set(names))
            params = {p.name: p for p in ctx.command.params}
            for name, raw in values.items():  # typed here, so a wrong value names the file
                try:
                    params[name].type_cast_value(ctx, raw)
                except click.BadParameter as err:
                    raise ConfigError(f"--config {value}: {name}: {err.message}") from None
            ctx.default_map = {**(ctx.default_map or {}), **values}
            return value

        config = inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=typer.Option(
            None, "--config", is_eager=True, callback=load,
            help="YAML, TOML or JSON file of settings by option name (flat, or under model/data/mop/train/... "
                 "sections); options on the command line win."))

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            kwargs.pop("config", None)
            settings = {s.name: {f.name: kwargs.pop(f.name) for f in s.fields()} for s in sections}
            return func(settings=settings, **kwargs)

        params = [*own, *generated, config]
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return wrap
