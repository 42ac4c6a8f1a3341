"""`--set field=value`: any `MoPConfig` / `TrainConfig` field from the command line, typed by the dataclass."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from mops.errors import ConfigError
from mops.training.config import TrainConfig
from mops.tuners.mops.config import MoPConfig

_FALSE, _TRUE = {"false", "0", "no", "off"}, {"true", "1", "yes", "on"}


def _coerce(owner: str, name: str, annotation: str, text: str) -> object:
    """`text` -> the field's type; `annotation` is the dataclass's (string) annotation."""
    if "None" in annotation and text.lower() in {"none", "null", ""}:
        return None
    try:
        if annotation.startswith("bool"):
            if text.lower() not in _FALSE | _TRUE:
                raise ValueError
            return text.lower() in _TRUE
        if annotation.startswith("int"):
            return int(text)
        if annotation.startswith("float"):
            return float(text)
    except ValueError:
        raise ConfigError(f"--set {name}={text}: {owner}.{name} takes {annotation}") from None
    return text


def known_fields() -> tuple[set[str], set[str]]:
    """Names of the MoPConfig and TrainConfig fields."""
    return {f.name for f in dataclasses.fields(MoPConfig)}, {f.name for f in dataclasses.fields(TrainConfig)}


def parse_overrides(items: Sequence[str]) -> tuple[dict, dict]:
    """["gate_strength=0.5", "gate_balance=0.01"] -> (MoPConfig fields, TrainConfig fields), typed."""
    owners = {f.name: (cls.__name__, str(f.type)) for cls in (MoPConfig, TrainConfig) for f in dataclasses.fields(cls)}
    mop_names = known_fields()[0]
    mop, train = {}, {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in owners:
            raise ConfigError(f"--set {item!r}: expected field=value with a MoPConfig or TrainConfig field; "
                              f"known: {', '.join(sorted(owners))}")
        owner, annotation = owners[name]
        (mop if name in mop_names else train)[name] = _coerce(owner, name, annotation, text.strip())
    return mop, train
