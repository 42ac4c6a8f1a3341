"""MoPs model semantics on tiny models of real (pre-norm) architectures, sdpa and eager attention."""

from __future__ import annotations

import pytest
import torch
from peft import PromptTuningConfig, get_peft_model

from mops.data import Example, Tokenizer, collate
from mops.errors import ConfigError, ModelLoadError
from mops.models.loading import BaseModel
from mops.tuners.mops.config import MoPConfig
from mops.tuners.mops.model import MoPModel
from tests.conftest import ARCHS, tiny_model

IMPLS = ("sdpa", "eager")


def make_mop(arch="llama", attn="sdpa", tokenizer=None, seed=0, device="cpu", **cfg) -> MoPModel:
    """A MoP model on a tiny random `arch` model placed on `device` (the `device` fixture: the GPU if any)."""
    settings = {"num_experts": 3, "prompts_per_expert": 2, "injection_layer": 2, "routing": "attention", **cfg}
    base = BaseModel(tiny_model(arch, attn=attn, seed=seed).to(device), tokenizer, f"tiny-{arch}", "memory")
    return MoPModel(base, MoPConfig(**settings))


def batch(seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 300, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return ids.to(device), mask.to(device)


def test_trainable_parts_live_on_the_base_device(device):
    """Prompts, master copies and gate sit where the base does (a CPU copy would fail every GPU step)."""
    mop = make_mop(device=device, routing="merge")
    assert {p.device.type for p in mop.parameters()} == {device.type}
    assert mop.expert_prompts.dtype == mop.input_prompts.dtype == torch.float32


def peak_gate(model: MoPModel, expert: int, strength: float = 8.0) -> None:
    with torch.no_grad():
        model.gate.fc2.weight.zero_()
        model.gate.fc2.bias.zero_()
        model.gate.fc2.bias[expert] = strength


@pytest.mark.parametrize("arch", ARCHS)
def test_layer0_no_gate_equals_peft_prompt_tuning(arch, device):
    mop = make_mop(arch, injection_layer=0, use_gate=False, prompt_init="random", device=device)
    # Gemma 3's sliding window must cover prompts + tokens here: peft lets virtual tokens slide out of the
    # window, mops keeps the slots visible to every token (test_slots_stay_visible_in_sliding_window_layers).
    mop.lm.config.sliding_window = 64
    reference = get_peft_model(
        tiny_model(arch, sliding_window=64).to(device), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6)
    )
    with torch.no_grad():
        reference.prompt_encoder["default"].embedding.weight.copy_(mop.expert_prompts)
    ids, mask = batch(device=device)
    ours = mop(ids, mask)
    theirs = reference(input_ids=ids, attention_mask=mask).logits[:, -ids.shape[1] :]
    valid = mask.bool()
    torch.testing.assert_close(ours[valid], theirs[valid], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attn", IMPLS)
def test_slots_stay_visible_in_sliding_window_layers(attn):
    """Gemma 3 window of 8 < 6 slots + 11 tokens: the last tokens still attend to the expert prompts."""
    mop = make_mop("gemma3", attn, use_gate=False, injection_layer=0, prompt_init="random")
    ids, mask = batch()
    before = mop(ids[:1], mask[:1])[0, -1]
    with torch.no_grad():
        mop.expert_prompts[:2].mul_(3.0)  # the first slots, far outside the last token's window
    assert (mop(ids[:1], mask[:1])[0, -1] - before).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", IMPLS)
def test_neutral_gate_equals_no_gate_and_gate_changes_logits(arch, attn, device):
    gated = make_mop(arch, attn, gate_mode="scaled", device=device)
    plain = make_mop(arch, attn, use_gate=False, device=device)
    ids, mask = batch(device=device)
    valid = mask.bool()
    peak_gate(gated, 0, strength=0.0)  # uniform weights: E * g = 1, a zero bias
    torch.testing.assert_close(gated(ids, mask)[valid], plain(ids, mask)[valid], rtol=1e-5, atol=1e-5)
    peak_gate(gated, 0)
    changed = (gated(ids, mask) - plain(ids, mask))[valid].abs().max()
    assert changed > 1e-2, f"gate had no effect on real tokens ({changed})"
    peak_gate(gated, 1)
    other = (gated(ids, mask) - plain(ids, mask))[valid].abs().max()
    assert other > 1e-2


def test_plain_softmax_mode_is_not_neutral():
    """softmax mode (the paper's): a uniform gate still down-weights the prompts by 1/E."""
    soft = make_mop(gate_mode="softmax")
    plain = make_mop(use_gate=False)
    peak_gate(soft, 0, strength=0.0)
    ids, mask = batch()
    assert (soft(ids, mask) - plain(ids, mask))[mask.bool()].abs().max() > 1e-3


def test_untrained_model_equals_frozen_input_prompt_model():
    """Experts start at P^1's hidden states at L_int: a neutral gate reproduces the recovery-stage model."""
    mop = make_mop()
    peak_gate(mop, 0, strength=0.0)
    ids, mask = batch()
    injected = mop(ids, mask)
    mop.set_stage("recovery")
    frozen = mop(ids, mask)
    torch.testing.assert_close(injected[mask.bool()], frozen[mask.bool()], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", IMPLS)
@pytest.mark.parametrize("routing", ["attention", "merge"])
def test_mixed_length_batch_equals_one_by_one(arch, attn, routing, device):
    mop = make_mop(arch, attn, device=device, routing=routing)
    peak_gate(mop, 2, strength=3.0)
    with torch.no_grad():
        mop.gate.fc1.weight.normal_(0, 0.5)  # input-dependent gate
    ids, mask = batch(device=device)
    together = mop(ids, mask)
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        alone = mop(ids[row : row + 1, :n], mask[row : row + 1, :n])
        torch.testing.assert_close(together[row, :n], alone[0], rtol=1e-4, atol=1e-5)


def test_no_input_prompts_hides_slots_below_injection():
    """num_input_prompts=0: below L_int the tokens see no slots, so the gate reads the plain model's states."""
    mop = make_mop(num_input_prompts=0)
    ids, mask = batch()
    got = mop.gate_inputs(ids[:1, :7], mask[:1, :7])
    plain = tiny_model("llama")(input_ids=ids[:1, :7], output_hidden_states=True).hidden_states[2]  # enters layer 2
    torch.testing.assert_close(got[0], plain[0].mean(0), rtol=1e-4, atol=1e-5)


def test_gradients_reach_only_prompts_and_gate_and_base_stays_bit_identical():
    mop = make_mop()
    before = {k: v.clone() for k, v in mop.lm.state_dict().items()}
    p1 = mop.input_prompts.detach().clone()
    params = mop.set_stage("mop")
    trainable_gate = [p for n, p in mop.gate.named_parameters() if n != "strength"]  # strength: fixed by default
    assert {id(p) for p in params} == {id(mop.expert_prompts), *(id(p) for p in trainable_gate)}
    opt = torch.optim.AdamW(params, lr=1e-2)
    ids, mask = batch()
    for _ in range(3):
        loss = mop(ids, mask)[mask.bool()].logsumexp(-1).mean()
        loss.backward()
        assert mop.expert_prompts.grad.abs().sum() > 0
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable_gate)
        assert mop.gate.strength.grad is None
        assert mop.input_prompts.grad is None
        assert all(p.grad is None for p in mop.lm.parameters())
        opt.step()
        opt.zero_grad()
    after = mop.lm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(p1, mop.input_prompts)


def test_generation_cache_and_left_padding(tiny_tokenizer, device):
    mop = make_mop(tokenizer=tiny_tokenizer, device=device)
    peak_gate(mop, 1, strength=2.0)
    with torch.no_grad():
        mop.gate.fc1.weight.normal_(0, 0.5)
    tok = Tokenizer(tiny_tokenizer, ["t"], 64)
    prompts = tok.encode_all([Example("t", "Name a colour.", "", "x"), Example("t", "Say something long about rivers and mills.", "", "x")], prompt_only=True)
    b = {k: v.to(device) for k, v in collate(prompts, pad_id=0, left_pad=True).items()}
    kw = dict(max_new_tokens=6, do_sample=False, min_new_tokens=6)
    cached = mop.generate(b["input_ids"], b["attention_mask"], **kw)
    uncached = mop.generate(b["input_ids"], b["attention_mask"], use_cache=False, **kw)
    assert torch.equal(cached, uncached)
    for row, enc in enumerate(prompts):
        single = mop.generate(torch.tensor([enc.input_ids], device=device),
                              torch.ones(1, len(enc.input_ids), dtype=torch.long, device=device), **kw)
        assert torch.equal(single[0], cached[row])


def test_save_and_load_roundtrip(tmp_path):
    mop = make_mop()
    peak_gate(mop, 1, strength=2.0)
    with torch.no_grad():
        mop.expert_prompts.add_(0.1)
    mop.save_pretrained(tmp_path / "ad")
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    loaded = MoPModel.from_pretrained(BaseModel(tiny_model("llama"), None, "tiny-llama", "memory"), tmp_path / "ad")
    ids, mask = batch()
    torch.testing.assert_close(loaded(ids, mask), mop(ids, mask))


def test_adapter_for_another_base_is_refused(tmp_path):
    make_mop("llama").save_pretrained(tmp_path / "ad")
    other = BaseModel(tiny_model("qwen2"), None, "tiny-qwen2", "memory")
    with pytest.raises(ModelLoadError, match=r"trained for another base model \(base_model: adapter 'tiny-llama'"):
        MoPModel.from_pretrained(other, tmp_path / "ad")
    with pytest.raises(ModelLoadError, match="adapter_config.json is missing"):
        MoPModel.from_pretrained(other, tmp_path)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"injection_layer": 4}, r"injection_layer must be in \[0, 3\]"),
        ({"gate_mode": "hard"}, "gate_mode must be one of"),
        ({"num_input_prompts": 5}, "num_input_prompts must be 0 or"),
        ({"num_experts": 0}, "num_experts must be a positive integer"),
        ({"prompt_init": "text"}, "needs prompt_init_text"),
    ],
)
def test_config_validation(settings, message):
    with pytest.raises(ConfigError, match=message):
        make_mop(**settings)


def test_unsupported_attention_is_refused():
    with pytest.raises(ConfigError, match="sdpa and eager"):
        make_mop(attn="flex_attention")


def test_unload_restores_the_plain_model():
    mop = make_mop(prompt_init="random")
    ids, mask = batch()
    plain = tiny_model("llama")(input_ids=ids, attention_mask=mask).logits
    lm = mop.unload()
    assert lm.config._attn_implementation == "sdpa"
    torch.testing.assert_close(lm(input_ids=ids, attention_mask=mask).logits, plain)


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_routing_leaves_the_model_mask_alone_except_in_sliding_layers(arch, monkeypatch):
    """Merge routing adds no bias: only sliding-window layers (Gemma 3's) get an edited mask; every other
    layer gets the model's own, so SDPA can pick its fused kernels."""
    from mops.tuners.mops import attention

    edited: list[int] = []
    real = attention.slot_mask
    monkeypatch.setattr(attention, "slot_mask", lambda mask, state, layer, *a: edited.append(layer) or real(mask, state, layer, *a))
    mop = make_mop(arch, routing="merge")
    ids, mask = batch()
    mop(ids, mask)
    sliding = [i for i, layer in enumerate(mop.layers) if getattr(layer.self_attn, "sliding_window", None) is not None]
    assert sorted(set(edited)) == sliding and (arch != "gemma3" or sliding)


def test_bf16_compute_trains_fp32_master_prompts_as_far_as_fp32(device):
    """A bf16 base computes in bf16 while the prompts and gate (and AdamW's moments) stay fp32: after a few
    steps at a small learning rate the prompts moved as far as in an fp32 run (bf16 prompts would round
    most of these updates away)."""
    moved = {}
    for dtype in (torch.float32, torch.bfloat16):
        mop = make_mop(routing="merge", device=device)
        mop.lm.to(dtype)
        start = mop.expert_prompts.detach().clone()
        params = mop.set_stage("mop")
        opt = torch.optim.AdamW(params, lr=1e-4)
        ids, mask = batch(device=device)
        for _ in range(4):
            mop(ids, mask)[mask.bool()].float().logsumexp(-1).mean().backward()
            opt.step()
            opt.zero_grad()
        assert mop.expert_prompts.dtype == torch.float32 and all(p.dtype == torch.float32 for p in params)
        moved[dtype] = (mop.expert_prompts.detach() - start).norm().item()
    assert moved[torch.float32] > 0
    assert moved[torch.bfloat16] == pytest.approx(moved[torch.float32], rel=0.2)
