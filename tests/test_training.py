"""Training: resume equals uninterrupted, NaN stops cleanly, 2 processes equal 1, gate pretraining, CLI run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mops.data import Example, Tokenizer
from mops.models.loading import BaseModel
from mops.training import Runtime, TrainConfig, TrainingError, train_steps
from mops.training.checkpoint import latest_checkpoint
from mops.training.gate_pretraining import pretrain_gate
from mops.training.sampler import shard, step_indices
from mops.tuners.mops.config import MoPConfig
from mops.tuners.mops.model import MoPModel
from tests.conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]


def setup(tokenizer, tmp_path, **cfg):
    base = BaseModel(tiny_model("llama"), tokenizer, "tiny", "memory")
    model = MoPModel(base, MoPConfig(num_experts=2, prompts_per_expert=2, injection_layer=2, prompt_init="random"))
    examples = [Example("ab"[i % 2], f"Question {i} about rivers" + " and mills" * (i % 4), "", f"Answer {i}")
                for i in range(12)]
    data = Tokenizer(tokenizer, ["a", "b"], 64).encode_all(examples)
    rt = Runtime.create(tmp_path / "run", device="cpu", progress=False)
    groups = [{"params": [model.expert_prompts], "lr": 1e-2}, {"params": list(model.gate.parameters()), "lr": 1e-2}]
    return model, data, rt, groups, TrainConfig(**{"steps": 6, "batch_size": 3, "checkpoint_every": 2, **cfg})


def diverge_at(update: int, model: MoPModel, monkeypatch):
    """Make AdamW's `update`-th step leave a NaN in the expert prompts; returns the real `step`."""
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def diverging_step(self, *a, **k):
        out = real_step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == update:
            with torch.no_grad():
                model.expert_prompts[0, 0] = float("nan")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", diverging_step)
    return real_step


def test_sampler_is_a_function_of_seed_and_step():
    first = [step_indices(10, 4, s, seed=3) for s in range(5)]
    assert first == [step_indices(10, 4, s, seed=3) for s in range(5)]
    assert sorted(sum(first[:2], []) + first[2][:2]) == list(range(10))  # epoch 0 covers every example once
    assert first != [step_indices(10, 4, s, seed=4) for s in range(5)]
    assert shard([0, 1, 2, 3, 4, 5], rank=1, world=2, grad_accum=2) == [[1, 3], [5]]


def test_kill_and_resume_gives_the_same_loss_curve(tiny_tokenizer, tmp_path, monkeypatch):
    """... and keeps the evaluations made before the kill (saved in the checkpoint)."""
    def norm_of(model):
        return lambda step: {"step": step, "norm": float(model.expert_prompts.detach().norm())}

    model, data, rt, groups, cfg = setup(tiny_tokenizer, tmp_path / "a", eval_every=2)
    straight_evals: list[dict] = []
    straight = train_steps(model, "mops", groups, data, cfg.steps, cfg, rt, 0, tmp_path / "a" / "ckpt",
                           on_eval=norm_of(model), evals=straight_evals)
    final = model.expert_prompts.detach().clone()
    assert [e["step"] for e in straight_evals] == [2, 4]  # the last step is the caller's final evaluation

    model, data, rt, groups, cfg = setup(tiny_tokenizer, tmp_path / "b", eval_every=2)
    ckpt = tmp_path / "b" / "ckpt"
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def dying_step(self, *a, **k):  # the process "dies" during step 5, after the step-4 checkpoint
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        train_steps(model, "mops", groups, data, cfg.steps, cfg, rt, 0, ckpt, on_eval=norm_of(model), evals=[])
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert latest_checkpoint(ckpt).name == "step-000004"

    model, data, rt, groups, cfg = setup(tiny_tokenizer, tmp_path / "b", eval_every=2)  # a fresh process
    resumed_evals: list[dict] = []
    resumed = train_steps(model, "mops", groups, data, cfg.steps, cfg, rt, 0, ckpt, on_eval=norm_of(model),
                          evals=resumed_evals)
    assert resumed == pytest.approx(straight, rel=1e-6, abs=1e-7)
    assert [e["step"] for e in resumed_evals] == [2, 4]
    assert [e["norm"] for e in resumed_evals] == pytest.approx([e["norm"] for e in straight_evals], rel=1e-6)
    torch.testing.assert_close(model.expert_prompts.detach(), final)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_tokenizer, tmp_path, monkeypatch):
    model, data, rt, groups, cfg = setup(tiny_tokenizer, tmp_path, checkpoint_every=1)
    real_step = diverge_at(2, model, monkeypatch)  # the second update diverges
    with pytest.raises(TrainingError, match=r"non-finite in the update of step 2. Last good checkpoint: .*step-000001"):
        train_steps(model, "mops", groups, data, cfg.steps, cfg, rt, 0, tmp_path / "ckpt")
    with torch.no_grad():
        model.expert_prompts.fill_(float("nan"))  # a NaN loss (not an update) is caught before the update
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    with pytest.raises(TrainingError, match=r"loss is nan at step 1; stopped before updating"):
        train_steps(model, "mops", groups, data, cfg.steps, cfg, rt, 0, tmp_path / "fresh")
    from safetensors.torch import load_file

    last = load_file(str(latest_checkpoint(tmp_path / "ckpt") / "adapter.safetensors"))
    assert all(torch.isfinite(t).all() for t in last.values())


def test_reading_back_every_few_steps_logs_the_same_and_stops_at_the_bad_step(tiny_tokenizer, tmp_path, monkeypatch):
    """The accelerator path (losses read every few steps, not every step) logs the very same losses per step,
    and a divergence is reported at the step it happened with no checkpoint saved after it."""
    from mops.training import loop

    model, data, rt, groups, cfg = setup(tiny_tokenizer, tmp_path / "every", checkpoint_every=0)
    every_step = train_steps(model, "mops", groups, data, cfg.steps, cfg, rt, 0)
    monkeypatch.setattr(loop, "sync_interval", lambda device: 4)
    model, data, rt, groups, cfg = setup(tiny_tokenizer, tmp_path / "batched", checkpoint_every=0)
    batched = train_steps(model, "mops", groups, data, cfg.steps, cfg, rt, 0)
    assert batched == every_step and len(batched) == cfg.steps
    logged = [json.loads(line) for line in (tmp_path / "batched" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r.get("stage") == "mops"] == list(range(1, cfg.steps + 1))

    model, data, rt, groups, cfg = setup(tiny_tokenizer, tmp_path / "nan", checkpoint_every=3)
    diverge_at(5, model, monkeypatch)  # steps 5 and 6 are read back together
    with pytest.raises(TrainingError, match=r"non-finite in the update of step 5. Last good checkpoint: .*step-000003"):
        train_steps(model, "mops", groups, data, cfg.steps, cfg, rt, 0, tmp_path / "nan" / "ckpt")
    assert latest_checkpoint(tmp_path / "nan" / "ckpt").name == "step-000003"


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_processes_match_one(tmp_path, grad_accum):
    """torchrun sets RANK/WORLD_SIZE; accelerate picks them up (gloo on CPU)."""
    outs = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}" / "out.json"
        out.parent.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
               "--master_port", str(29500 + n + 10 * grad_accum), str(ROOT / "tests" / "dist_train.py"), str(out),
               str(grad_accum)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[n] = json.loads(out.read_text())
    assert outs[2]["world"] == 2
    assert outs[2]["losses"] == pytest.approx(outs[1]["losses"], rel=1e-5)
    torch.testing.assert_close(torch.tensor(outs[2]["expert_prompts"]), torch.tensor(outs[1]["expert_prompts"]),
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor(outs[2]["gate.fc2.bias"]), torch.tensor(outs[1]["gate.fc2.bias"]),
                               rtol=1e-4, atol=1e-6)


def test_gate_pretraining_learns_task_to_expert(tiny_tokenizer, tmp_path):
    base = BaseModel(tiny_model("llama"), tiny_tokenizer, "tiny", "memory")
    model = MoPModel(base, MoPConfig(num_experts=2, prompts_per_expert=2, injection_layer=2))
    examples = [Example("a", f"List {i} famous rivers of the world.", "", "-") for i in range(20)]
    examples += [Example("b", f"Summarise: the cat {i} sat on the mat.", "", "-") for i in range(20)]
    prompts = Tokenizer(tiny_tokenizer, ["a", "b"], 64).encode_all(examples, prompt_only=True)
    rt = Runtime.create(tmp_path, device="cpu", progress=False)
    cfg = TrainConfig(gate_pretrain_steps=300, gate_pretrain_lr=1e-2)
    result = pretrain_gate(model, prompts, cfg, rt, pad_id=0)
    assert result["gate_pretrain_accuracy"] == 1.0 and result["gate_pretrain_ce"] < math.log(2) / 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["stage"] == "gate_pretrain" and records[-1]["step"] == 300


def test_length_grouped_batches_cover_each_epoch_and_cut_padding():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, 200, (64,), generator=gen).tolist()
    steps = [step_indices(64, 4, s, seed=1, lengths=lengths, window=8) for s in range(32)]
    assert sorted(sum(steps[:16], [])) == list(range(64))  # windows of 8 batches x 4 = 32 examples
    assert steps == [step_indices(64, 4, s, seed=1, lengths=lengths, window=8) for s in range(32)]

    def padding(batches):
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)

    plain = [step_indices(64, 4, s, seed=1) for s in range(32)]
    assert padding(steps) < 0.5 * padding(plain)


def test_bf16_base_trains_fp32_master_prompts_close_to_fp32(tiny_tokenizer, tmp_path):
    """A bf16 base computes in bf16 while the prompts, the gate and Adam's state stay fp32: the updates are
    not lost to bf16 rounding, and the loss curve follows the fp32 run's closely."""
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        base = BaseModel(tiny_model("llama").to(dtype), tiny_tokenizer, "tiny", "memory")
        model = MoPModel(base, MoPConfig(num_experts=2, prompts_per_expert=2, injection_layer=2, prompt_init="random"))
        assert model.expert_prompts.dtype == model.input_prompts.dtype == torch.float32
        assert {p.dtype for p in model.gate.parameters()} == {torch.float32}
        examples = [Example("ab"[i % 2], f"Question {i} about rivers", "", f"Answer {i}") for i in range(12)]
        data = Tokenizer(tiny_tokenizer, ["a", "b"], 64).encode_all(examples)
        rt = Runtime.create(tmp_path / str(dtype), device="cpu", progress=False)
        model.set_stage("mop")
        before = model.expert_prompts.detach().clone()
        groups = [{"params": [model.expert_prompts], "lr": 1e-3}, {"params": list(model.gate.parameters()), "lr": 1e-3}]
        cfg = TrainConfig(steps=8, batch_size=4, checkpoint_every=0)
        losses[dtype] = train_steps(model, "mops", groups, data, cfg.steps, cfg, rt, 0)
        moved = (model.expert_prompts.detach() - before).abs()
        assert moved.max() > 0 and moved.max() < 1e-2  # lr-sized steps, kept although bf16 could not hold them
    assert losses[torch.float32] != losses[torch.bfloat16]
    for a, b in zip(losses[torch.float32], losses[torch.bfloat16]):
        assert b == pytest.approx(a, rel=2e-2)
