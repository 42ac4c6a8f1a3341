"""The frozen-prefix activation cache: exact, lazy, shared by key, and response-only logits."""

from __future__ import annotations

import pytest
import torch

from mops.data import Example, Tokenizer
from mops.evaluation.perplexity import device_batch, evaluate_perplexity, loss_positions, token_nll
from mops.tuners.mops.prefix_cache import mop_logits_fn, open_prefix_cache
from tests.conftest import ARCHS
from tests.test_mop_model import make_mop, peak_gate

EXAMPLES = [Example("ab"[i % 2], f"Question {i} about rivers" + " and mills" * (i % 4), "ctx " * (i % 3),
                    f"Answer {i}" + " yes" * (i % 5)) for i in range(10)]


def encoded(tokenizer):
    return Tokenizer(tokenizer, ["a", "b"], 64).encode_all(EXAMPLES)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("num_input_prompts", [None, 0])
def test_cached_loss_and_gradients_equal_uncached(arch, num_input_prompts, tiny_tokenizer, tmp_path, device):
    mop = make_mop(arch, tokenizer=tiny_tokenizer, num_input_prompts=num_input_prompts, device=device)
    peak_gate(mop, 1, strength=2.0)
    with torch.no_grad():
        mop.gate.fc1.weight.normal_(0, 0.5)
    enc = encoded(tiny_tokenizer)
    cache = open_prefix_cache(mop, enc, pad_id=0, root=tmp_path)
    idx = [3, 0, 7, 5]
    b = device_batch([enc[i] for i in idx], idx, 0, device)
    pos = b["positions"]
    losses, grads = [], []
    for fn in (mop_logits_fn(mop), mop_logits_fn(mop, cache)):
        nll, count = token_nll(fn(b, pos), b["labels"], pos)
        loss = nll.sum() / count.sum()
        loss.backward()
        losses.append(loss.item())
        grads.append((mop.expert_prompts.grad.clone(), mop.gate.fc1.weight.grad.clone()))
        mop.zero_grad()
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for full, cached in zip(*grads):
        torch.testing.assert_close(full, cached, rtol=1e-4, atol=1e-6)
    assert int(cache.filled.sum()) == 4  # only the rows used were computed


def test_response_only_logits_match_full_logits(tiny_tokenizer):
    mop = make_mop(tokenizer=tiny_tokenizer)
    enc = encoded(tiny_tokenizer)
    b = device_batch(enc[:4], range(4), 0, "cpu")
    pos = loss_positions(b["labels"])
    assert len(pos) < b["labels"].shape[1] - 1  # the instruction part is skipped
    full = token_nll(mop(b["input_ids"], b["attention_mask"]), b["labels"])
    some = token_nll(mop(b["input_ids"], b["attention_mask"], pos), b["labels"], pos)
    torch.testing.assert_close(full[0], some[0])
    assert torch.equal(full[1], some[1])


def test_cache_is_shared_by_key_and_survives_reopening(tiny_tokenizer, tmp_path):
    mop = make_mop(tokenizer=tiny_tokenizer)
    enc = encoded(tiny_tokenizer)
    first = open_prefix_cache(mop, enc, pad_id=0, root=tmp_path).fill(batch_size=3)
    assert int(first.filled.sum()) == len(enc) and first.nbytes > 0
    again = open_prefix_cache(mop, enc, pad_id=0, root=tmp_path)
    assert again.folder == first.folder and int(again.filled.sum()) == len(enc)
    with torch.no_grad():
        mop.input_prompts.add_(0.01)  # new input prompts -> a new cache
    assert open_prefix_cache(mop, enc, pad_id=0, root=tmp_path).folder != first.folder
    bf16 = open_prefix_cache(mop, enc, pad_id=0, store="bfloat16", root=tmp_path)
    states, avg = bf16.states([1, 2])
    assert states.dtype == torch.bfloat16 and avg.dtype == torch.float32


def test_cached_evaluation_equals_uncached(tiny_tokenizer, tmp_path):
    mop = make_mop(tokenizer=tiny_tokenizer)
    peak_gate(mop, 0, strength=1.0)
    enc = encoded(tiny_tokenizer)
    cache = open_prefix_cache(mop, enc, pad_id=0, root=tmp_path)
    full = evaluate_perplexity(mop_logits_fn(mop), enc, ["a", "b"], 0, batch_size=3)
    cached = evaluate_perplexity(mop_logits_fn(mop, cache), enc, ["a", "b"], 0, batch_size=3)
    assert full.overall.ppl == pytest.approx(cached.overall.ppl, rel=1e-5)


def test_gate_inputs_from_cache_equal_running_the_lower_layers(tiny_tokenizer, tmp_path):
    from mops.evaluation.gating import gate_features

    mop = make_mop(tokenizer=tiny_tokenizer)
    enc = encoded(tiny_tokenizer)
    cache = open_prefix_cache(mop, enc, pad_id=0, root=tmp_path)
    feats, task_ids = gate_features(mop, enc, batch_size=4, pad_id=0)
    torch.testing.assert_close(cache.gate_inputs(range(len(enc))), feats, rtol=1e-5, atol=1e-6)
    assert task_ids.tolist() == [e.task_id for e in enc]


def test_cache_on_a_frozen_lora_model_is_exact_and_keyed_by_its_weights(tiny_tokenizer, tmp_path):
    """MoPs on a frozen LoRA model (lora_mops): the cached states include LoRA's effect below the injection
    layer, so cached logits equal the full forward; other LoRA weights open another cache."""
    from mops.models.fingerprint import tensors_digest
    from mops.training.config import TrainConfig
    from mops.tuners.registry import METHODS

    mop = make_mop(tokenizer=tiny_tokenizer, routing="merge", prompts_per_expert=2)
    peft = METHODS["lora_mops"].attach(mop.lm, TrainConfig())
    with torch.no_grad():
        for name, p in mop.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # LoRA B starts at zero: make the adapter change the states
    mop.lm.requires_grad_(False)
    mop.lm.eval()
    frozen = tensors_digest({n: p.detach() for n, p in mop.lm.named_parameters() if "lora_" in n})
    mop.set_stage("mop")
    enc = encoded(tiny_tokenizer)
    cache = open_prefix_cache(mop, enc, pad_id=0, root=tmp_path, frozen=frozen)
    idx = [1, 4, 6]
    b = device_batch([enc[i] for i in idx], idx, 0, "cpu")
    pos = loss_positions(b["labels"])
    full, cached = (token_nll(fn(b, pos), b["labels"], pos)[0] for fn in (mop_logits_fn(mop), mop_logits_fn(mop, cache)))
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)  # per-example NLL (padding positions aside)
    assert open_prefix_cache(mop, enc, pad_id=0, root=tmp_path).folder != cache.folder
    peft.unload()
    without_lora = token_nll(mop_logits_fn(mop)(b, pos), b["labels"], pos)[0]
    assert (without_lora - full).abs().max() > 1e-3  # the frozen LoRA changes what the cache holds
