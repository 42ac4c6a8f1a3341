"""A MoPs adapter on disk: `adapter_config.json` (settings + base identity) and `adapter_model.safetensors`.

The weights file's metadata repeats the settings and holds a digest of the tensors, so a config edited by hand
or a damaged weights file is refused with the field named, instead of a shape error deep in the model or,
worse, a model that loads and scores wrongly (an edited injection layer loads fine and computes nonsense).
No pickle anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mops import __version__
from mops.errors import ConfigError, ModelLoadError
from mops.models.fingerprint import tensors_digest
from mops.models.loading import BaseModel
from mops.progress import console
from mops.tuners.mops.config import MoPConfig
from mops.tuners.mops.gate import Gate

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


@dataclass
class AdapterFiles:
    """What an adapter folder holds, read and checked against itself and against `base`."""

    config: MoPConfig
    state: dict[str, torch.Tensor]


def save_adapter(directory: Path, state: dict[str, torch.Tensor], config: MoPConfig, base: BaseModel) -> Path:
    """Write both files; the weights' metadata records the settings and a digest of the tensors."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = config.to_dict()
    payload = {"peft_type": "MOPS", "mops_version": __version__, "base": base.identity,
               "base_fingerprint": base.fingerprint, "config": settings}
    metadata = {"format": "pt", "mops_config": json.dumps(settings, sort_keys=True),
                "mops_tensors_sha256": tensors_digest(state)}
    save_file(state, str(directory / WEIGHTS_NAME), metadata=metadata)
    (directory / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")
    return directory


def expected_shapes(config: MoPConfig, hidden_size: int) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape an adapter with `config` has on a base of width `hidden_size`."""
    gate = Gate(hidden_size, config.gate_hidden_size, config.num_experts)
    shapes = {"input_prompts": (config.num_slots, hidden_size), "expert_prompts": (config.num_prompts, hidden_size)}
    shapes.update({f"gate.{k}": tuple(v.shape) for k, v in gate.state_dict().items()})
    return shapes


def _read_config(file: Path) -> tuple[dict, MoPConfig]:
    try:
        payload = json.loads(file.read_text())
        return payload, MoPConfig.from_dict(payload["config"])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{file}: not valid JSON ({err})") from None
    except KeyError as err:
        raise ModelLoadError(f"{file}: not a MoPs adapter config (missing field {err})") from None
    except (ConfigError, TypeError) as err:
        raise ModelLoadError(f"{file}: {err}") from None


def saved_base_identity(directory: Path) -> dict:
    """The base identity an adapter folder was saved with (name, architecture, compression settings), read
    before any model is loaded, so the same base can be built for it."""
    file = directory / CONFIG_NAME
    if not file.is_file():
        raise ModelLoadError(f"{directory} is not a MoPs adapter: {CONFIG_NAME} is missing")
    return _read_config(file)[0].get("base", {})


def _read_weights(file: Path, device: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return load_file(str(file), device=device), metadata
    except Exception as err:  # safetensors raises its own error type for truncated or garbled files
        raise ModelLoadError(f"{file}: damaged adapter weights ({type(err).__name__}: {err}); save or copy the "
                             "adapter again") from None


def read_adapter(directory: Path, base: BaseModel) -> AdapterFiles:
    """Read and check an adapter folder for `base`: files present and readable, the config as saved, tensors
    undamaged and of the shapes the config implies, made for this base (a different weight fingerprint warns)."""
    cfg_file, weights = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    for file in (cfg_file, weights):
        if not file.is_file():
            raise ModelLoadError(f"{directory} is not a MoPs adapter: {file.name} is missing")
    payload, config = _read_config(cfg_file)
    saved_base = payload.get("base", {})
    diffs = [f"{k}: adapter {saved_base.get(k)!r} vs base {v!r}" for k, v in base.identity.items()
             if saved_base.get(k) != v and (k in saved_base or k != "compression_settings")]  # older adapters lack it
    if diffs:
        raise ModelLoadError(f"adapter {directory} was trained for another base model ({'; '.join(diffs)})")
    state, metadata = _read_weights(weights, str(base.model.device))
    if "mops_config" in metadata:  # adapters saved before mops recorded it skip these two checks
        saved = json.loads(metadata["mops_config"])
        edited = [f"{k} is {payload['config'].get(k)!r}, saved as {v!r}" for k, v in saved.items()
                  if payload["config"].get(k) != v]
        if edited:
            raise ModelLoadError(f"{cfg_file} was changed after the adapter was saved ({'; '.join(edited)}): restore "
                                 f"it (the weights in {WEIGHTS_NAME} were trained with the saved values)")
    if "mops_tensors_sha256" in metadata and tensors_digest(state) != metadata["mops_tensors_sha256"]:
        raise ModelLoadError(f"{weights}: the tensors do not match the digest recorded when they were saved (damaged "
                             "file?); save or copy the adapter again")
    expected = expected_shapes(config, base.model.config.hidden_size)
    own = state
    wrong = [f"{k} has shape {list(own[k].shape)}, the config implies {list(s)}" for k, s in expected.items()
             if k in own and tuple(own[k].shape) != s]
    missing = sorted(set(expected) - set(own) - {"gate.strength"})  # adapters older than the strength lack it
    extra = sorted(set(own) - set(expected))
    if wrong or missing or extra:
        parts = wrong + ([f"missing tensors {missing}"] if missing else []) + ([f"unknown tensors {extra}"] if extra else [])
        raise ModelLoadError(f"{directory}: {CONFIG_NAME} disagrees with {WEIGHTS_NAME} ({'; '.join(parts)}) (num_experts, "
                             "prompts_per_expert, routing and gate_hidden_size must be the values it was trained with)")
    saved_fp = payload.get("base_fingerprint")
    if saved_fp and base.fingerprint and saved_fp != base.fingerprint:
        console.print(f"[yellow]warning: adapter {directory} was trained on base weights with fingerprint "
                      f"{saved_fp[:12]}, this base has {base.fingerprint[:12]} (converted or compressed differently); "
                      "its numbers may differ from the training run's")
    return AdapterFiles(config, state)
