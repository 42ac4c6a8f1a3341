"""Comparing the settings a run folder was made with against a re-run's, so results are never relabelled; and
reading a settings field's type (the CLI and the Flower run config both derive from it)."""

from __future__ import annotations

import types
import typing
from typing import Any, Iterable

UNSET = "(unset)"


def flat(settings: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}; other values (lists, None) are kept as they are."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_settings(stored: dict, wanted: dict, may_change: Iterable[str] = ()) -> list[str]:
    """``"train.lr: 0.01 -> 0.5"`` for every setting of `wanted` that `stored` holds otherwise (JSON values)."""
    before, now, free = flat(stored), flat(wanted), set(may_change)
    return [f"{k}: {before.get(k, UNSET)!r} -> {v!r}" for k, v in now.items()
            if k not in free and before.get(k, UNSET) != v]


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """A field type without its None: ``int | None`` -> (int, True), ``str`` -> (str, False). Raises TypeError
    for a union of several types (no settings field has one)."""
    if not (isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union):
        return tp, False
    inner = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(inner) != 1:
        raise TypeError(f"unsupported settings type {tp}")
    return inner[0], len(inner) < len(typing.get_args(tp))
