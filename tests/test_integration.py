"""Integration tests on the real SmolLM2-135M (converted once per test run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mops.data import Tokenizer, collate, load_splits
from mops.data.selection import first_per_task, group_by_task
from mops.evaluation import base_logits_fn, evaluate_perplexity
from mops.tuners.mops.config import MoPConfig
from mops.tuners.mops.model import MoPModel

pytestmark = pytest.mark.integration


@torch.no_grad()
def gate_variants(mop: MoPModel, b: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits with a uniform (neutral) gate, with no gate, and with a gate peaked on expert 3."""
    mop.gate.fc2.weight.zero_()
    mop.gate.fc2.bias.zero_()
    neutral = mop(b["input_ids"], b["attention_mask"])
    mop.use_gate_(False)
    plain = mop(b["input_ids"], b["attention_mask"])
    mop.use_gate_(True)
    mop.gate.fc2.bias[3] = 6.0
    return neutral, plain, mop(b["input_ids"], b["attention_mask"])


def test_greedy_generation(smollm2):
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")
    out = smollm2.model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in smollm2.tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


def test_base_perplexity_on_bundled_dolly(smollm2):
    splits = load_splits("dolly")
    test = [ex for g in group_by_task(splits.test).values() for ex in g[:2]]
    enc = Tokenizer(smollm2.tokenizer, splits.tasks, 128).encode_all(test)
    report = evaluate_perplexity(base_logits_fn(smollm2.model), enc, splits.tasks, smollm2.tokenizer.pad_token_id, 7)
    assert 2.0 < report.overall.ppl < 60.0
    assert all(s.tokens > 0 for s in report.per_task.values())


def test_gate_changes_real_smollm2_logits_and_neutral_gate_is_no_gate(smollm2):
    mop = MoPModel(smollm2, MoPConfig(num_experts=7, prompts_per_expert=2, routing="attention"))
    try:
        assert mop.config.injection_layer == 10
        enc = Tokenizer(smollm2.tokenizer, ["t"], 64)
        from mops.data import Example

        b = collate(enc.encode_all([Example("t", "Name three rivers.", "", "Nile, Amazon, Danube.")]), 2)
        neutral, plain, peaked = gate_variants(mop, b)
        torch.testing.assert_close(neutral, plain, rtol=1e-4, atol=1e-4)
        assert (peaked - plain).abs().max() > 0.05
    finally:
        mop.unload()


def test_concurrent_first_loads_do_not_corrupt_the_cache(tmp_path):
    code = "from mops.models import load_base_model; b = load_base_model('smollm2-135m'); print(b.model.config.num_hidden_layers)"
    env = {**os.environ, "MOPS_HOME": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert [o[0].strip() for o in outs] == ["30", "30"]
    folders = [p.name for p in (tmp_path / "models").iterdir()]
    assert folders == ["smollm2-135m"]  # no temporary folder left behind
    assert (Path(tmp_path) / "models" / "smollm2-135m" / "model.safetensors").is_file()


def test_real_gemma3_270m_with_mops(gemma3):
    """A second real architecture: injection at layer 6 of 18, gate semantics and cached generation."""
    from mops.data import Example

    mop = MoPModel(gemma3, MoPConfig(num_experts=7, prompts_per_expert=2, routing="attention"))
    try:
        assert mop.config.injection_layer == 6
        tok = Tokenizer(gemma3.tokenizer, ["t"], 64)
        b = collate(tok.encode_all([Example("t", "Name three rivers.", "", "Nile, Amazon, Danube.")]),
                    gemma3.tokenizer.pad_token_id)
        neutral, plain, peaked = gate_variants(mop, b)
        torch.testing.assert_close(neutral, plain, rtol=1e-4, atol=1e-3)
        assert (peaked - plain).abs().max() > 0.05
        prompt = collate(tok.encode_all([Example("t", "Name a colour.", "", "x")], prompt_only=True), 0)
        kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
        cached = mop.generate(prompt["input_ids"], prompt["attention_mask"], **kw)
        assert torch.equal(cached, mop.generate(prompt["input_ids"], prompt["attention_mask"], use_cache=False, **kw))
    finally:
        mop.unload()


def test_smollm2_int8_keeps_perplexity_and_trains_prompts(smollm2):
    """LLM.int8() on the real model: PPL within 5% of fp32, memory < 45%, gradients reach the expert prompts."""
    from mops.compression import CompressionConfig, compress_model
    from mops.models import load_base_model

    compressed = compress_model(smollm2.path, CompressionConfig.parse("int8"), device="cpu")
    int8 = load_base_model(str(compressed.path), device="cpu")
    assert compressed.report["bytes"]["memory"] < 0.45 * smollm2.model.get_memory_footprint()
    splits = load_splits("dolly")
    encoded = Tokenizer(smollm2.tokenizer, splits.tasks, 128).encode_all(first_per_task(splits.test, 2))
    ppl = {name: evaluate_perplexity(base_logits_fn(m.model), encoded, splits.tasks, m.tokenizer.pad_token_id, 7)
           .overall.ppl for name, m in (("fp32", smollm2), ("int8", int8))}
    assert abs(ppl["int8"] / ppl["fp32"] - 1) < 0.05, ppl
    mop = MoPModel(int8, MoPConfig(tasks=splits.tasks))
    mop.set_stage("mop")
    b = collate(encoded[:2], smollm2.tokenizer.pad_token_id)
    mop(b["input_ids"], b["attention_mask"]).float().logsumexp(-1).mean().backward()
    assert mop.expert_prompts.grad is not None and mop.expert_prompts.grad.abs().sum() > 0


def test_gguf_conversion_is_deterministic_and_fingerprinted(tmp_path):
    """The same GGUF and library versions give the same bytes; the model cache records the fingerprint."""
    import hashlib
    import json

    from mops.models.fingerprint import weights_digest
    from mops.models.loading import SOURCE_FILE, convert_gguf
    from mops.models.registry import PACKAGED_MODELS

    gguf = PACKAGED_MODELS["smollm2-135m"].locate_gguf(tmp_path)
    folders = [convert_gguf(gguf, tmp_path / f"conversion-{n}") for n in (1, 2)]
    files = [hashlib.sha256((f / "model.safetensors").read_bytes()).hexdigest() for f in folders]
    assert files[0] == files[1]
    recorded = [json.loads((f / SOURCE_FILE).read_text())["fingerprint"] for f in folders]
    assert recorded[0] == recorded[1] == weights_digest(folders[0])
