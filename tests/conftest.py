"""Fixtures: tiny randomly initialised models of real architectures, a tiny tokenizer, the real SmolLM2."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
    Qwen2ForCausalLM,
)

from mops.data.sources import bundled_path

ARCHS = ("llama", "gemma3", "qwen2")
CHAT_TEMPLATE = "{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"


def _corpus() -> list[str]:
    with gzip.open(bundled_path("dolly"), "rt") as f:
        rows = [json.loads(line) for _, line in zip(range(300), f)]
    return [r["instruction"] + " " + r["input"] + " " + r["output"] for r in rows] + ["### Instruction: Input: Response:"]


def make_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with 384 tokens trained on bundled text: <pad>=0, <eos>=1, <bos>=2."""
    raw = RawTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384, special_tokens=["<pad>", "<eos>", "<bos>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    raw.train_from_iterator(_corpus(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return make_tiny_tokenizer()


def tiny_model(
    arch: str, vocab_size: int = 384, layers: int = 4, attn: str = "sdpa", seed: int = 0, sliding_window: int = 8
) -> torch.nn.Module:
    """A randomly initialised causal LM of a real architecture: width 64, `layers` layers, GQA."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
        eos_token_id=1, bos_token_id=2,
    )
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "gemma3":
        cfg = Gemma3TextConfig(
            **common, head_dim=16, sliding_window=sliding_window,
            layer_types=["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2),
        )
        model = Gemma3ForCausalLM(cfg)
    else:
        raise ValueError(arch)
    model.set_attn_implementation(attn)
    model.requires_grad_(False)
    return model.eval()


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def device() -> torch.device:
    """Where the core equivalence tests run: the GPU when one is visible (benchmarks/gpu_run.sh runs them
    there), else the CPU."""
    return DEVICE


def pytest_collection_modifyitems(items) -> None:
    """Tests that take the `device` fixture are marked `device` (`pytest -m device`: the GPU's share)."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


def save_tiny_model(path: Path, tokenizer, arch: str = "llama") -> Path:
    """A tiny model of `arch` saved as a HF model folder (safetensors + tokenizer)."""
    tiny_model(arch).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_model_dir(tmp_path: Path, tiny_tokenizer) -> Path:
    return save_tiny_model(tmp_path / "tiny-llama", tiny_tokenizer)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch) -> None:
    """Every test gets its own MOPS_HOME unless it uses the shared real-model cache."""
    if "MOPS_TEST_SHARED_HOME" not in os.environ:
        monkeypatch.setenv("MOPS_HOME", str(tmp_path_factory.mktemp("mops_home")))


def _load_real(name: str):
    """A packaged model, converted once into a cache shared by test runs (MOPS_TEST_MODEL_HOME)."""
    from mops.models import load_base_model

    home = Path(os.environ.get("MOPS_TEST_MODEL_HOME", Path.home() / ".cache" / "mops-test"))
    old = os.environ.get("MOPS_HOME")
    os.environ["MOPS_HOME"] = str(home)
    try:
        return load_base_model(name, device="cpu", dtype="float32")  # fp32 tolerances on any machine; CUDA: `device`
    finally:
        if old is None:
            os.environ.pop("MOPS_HOME", None)
        else:
            os.environ["MOPS_HOME"] = old


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M (Llama architecture, 30 layers)."""
    return _load_real("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    """The real Gemma 3 270M (18 layers, sliding-window + full attention)."""
    return _load_real("gemma3-270m")
