"""The mixture's research options: gate strength (fixed / learned), router noise, load balancing, soft gate
pretraining, task-example expert init, the options of `mops train`, the shared stage store, the experiment log."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from mops.data import Example, Tokenizer, collate
from mops.errors import ConfigError
from mops.evaluation.gating import routing_stats
from mops.models.loading import BaseModel
from mops.reports.experiment_log import append_record, experiment_record
from mops.training import Runtime, TrainConfig, train_steps
from mops.training.gate_pretraining import pretrain_gate
from mops.evaluation.results import Evaluation, MethodResult, RunResult
from mops.tuners.mops.config import MoPConfig
from mops.tuners.mops.gate import balance_loss, log_weights
from mops.tuners.mops.model import MoPModel
from mops.tuners.peft_baselines import lora_count, matched_ia3_targets, matched_lora_rank
from mops.tuners.registry import METHODS
from tests.conftest import tiny_model
from tests.test_cli import run_cli
from tests.test_cli_train import ARGS, step_records
from tests.test_mop_model import batch, make_mop, peak_gate


def _examples(n: int = 12) -> list[Example]:
    return [Example("ab"[i % 2], f"Question {i} about rivers" + " and mills" * (i % 4), "", f"Answer {i}")
            for i in range(n)]


def test_gate_strength_scales_the_bias_and_zero_is_neutral():
    plain = make_mop(use_gate=False)
    ids, mask = batch()
    valid = mask.bool()
    neutral = make_mop(gate_strength=0.0)
    peak_gate(neutral, 0)  # a sharp gate, but s = 0
    torch.testing.assert_close(neutral(ids, mask)[valid], plain(ids, mask)[valid], rtol=1e-5, atol=1e-5)
    half = make_mop(gate_strength=0.5)
    peak_gate(half, 0)
    weights = half.gate(torch.randn(2, half.lm.config.hidden_size))
    torch.testing.assert_close(half.gate.attention_bias(weights, "scaled"), 0.5 * log_weights(weights, "scaled"))
    full = make_mop()
    peak_gate(full, 0)
    d_half = (half(ids, mask) - plain(ids, mask))[valid].abs().max()
    d_full = (full(ids, mask) - plain(ids, mask))[valid].abs().max()
    assert 1e-3 < d_half < d_full


def test_learned_strength_gets_gradients_and_its_own_learning_rate():
    fixed = make_mop()
    fixed.set_stage("mop")
    assert not fixed.gate.strength.requires_grad and fixed.gate.fc1.weight.requires_grad
    mop = make_mop(gate_strength=0.0, learn_gate_strength=True)
    mop.set_stage("mop")
    assert mop.gate.strength.requires_grad
    groups = METHODS["mops"].param_groups(mop, TrainConfig(lr=1e-2, gate_lr=1e-4))
    assert [g["lr"] for g in groups] == [1e-2, 1e-4, 1e-2] and groups[2]["params"] == [mop.gate.strength]
    assert all(p is not mop.gate.strength for p in groups[1]["params"])
    peak_gate(mop, 1)
    ids, mask = batch()
    mop(ids, mask)[mask.bool()].pow(2).mean().backward()
    assert mop.gate.strength.grad is not None and mop.gate.strength.grad.abs() > 0
    assert mop.gate.fc2.bias.grad.abs().max() == 0  # s = 0: the MLP gets no gradient until s moves
    mop.set_stage("recovery")
    assert not mop.gate.strength.requires_grad


def test_router_noise_only_in_training_mode():
    mop = make_mop(gate_noise=2.0)
    x = torch.randn(4, mop.lm.config.hidden_size)
    assert not mop.gate.training  # evaluation and generation are deterministic
    torch.testing.assert_close(mop.gate(x), mop.gate(x))
    mop.gate.train()
    assert (mop.gate(x) - mop.gate(x)).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="gate_noise must be >= 0"):
        MoPConfig(gate_noise=-1.0)


def test_balance_loss_values():
    uniform = torch.full((5, 4), 0.25)
    assert float(balance_loss(uniform)) == pytest.approx(0.0, abs=1e-6)
    collapsed = torch.zeros(5, 4)
    collapsed[:, 2] = 1.0
    assert float(balance_loss(collapsed)) == pytest.approx(math.log(4), rel=1e-5)
    spread = torch.eye(4)  # each example sharp, the batch balanced: no penalty
    assert float(balance_loss(spread)) == pytest.approx(0.0, abs=1e-6)


def _train(tokenizer, tmp_path, **cfg) -> tuple[MoPModel, list[float]]:
    base = BaseModel(tiny_model("llama"), tokenizer, "tiny", "memory")
    model = MoPModel(base, MoPConfig(num_experts=2, prompts_per_expert=2, injection_layer=2, prompt_init="random",
                                     routing="attention", gate_noise=cfg.pop("noise", 0.0)))
    model.set_stage("mop")
    data = Tokenizer(tokenizer, ["a", "b"], 64).encode_all(_examples())
    rt = Runtime.create(tmp_path, device="cpu", progress=False)
    train_cfg = TrainConfig(**{"steps": 3, "batch_size": 3, "checkpoint_every": 0, "gate_lr": 1e-2, **cfg})
    losses = train_steps(model, "mops", METHODS["mops"].param_groups(model, train_cfg), data, 3, train_cfg, rt, 0)
    return model, losses


def test_balance_term_changes_the_gate_update_not_the_logged_loss(tiny_tokenizer, tmp_path):
    plain, losses = _train(tiny_tokenizer, tmp_path / "a", lr=1e-2)
    balanced, balanced_losses = _train(tiny_tokenizer, tmp_path / "b", lr=1e-2, gate_balance=10.0)
    assert balanced_losses[0] == pytest.approx(losses[0], rel=1e-6)  # the logged loss is the NLL alone
    assert (plain.gate.fc2.bias - balanced.gate.fc2.bias).abs().max() > 1e-4
    noisy, _ = _train(tiny_tokenizer, tmp_path / "c", lr=1e-2, noise=1.0)
    assert not noisy.gate.training  # back to evaluation mode after training


def test_soft_pretraining_targets_give_a_softer_gate(tiny_tokenizer, tmp_path):
    examples = [Example("a", f"List {i} famous rivers of the world.", "", "-") for i in range(20)]
    examples += [Example("b", f"Summarise: the cat {i} sat on the mat.", "", "-") for i in range(20)]
    prompts = Tokenizer(tiny_tokenizer, ["a", "b"], 64).encode_all(examples, prompt_only=True)
    tops = []
    for smoothing in (0.0, 0.5):
        base = BaseModel(tiny_model("llama"), tiny_tokenizer, "tiny", "memory")
        model = MoPModel(base, MoPConfig(num_experts=2, prompts_per_expert=2, injection_layer=2))
        cfg = TrainConfig(gate_pretrain_steps=300, gate_pretrain_lr=1e-2, gate_pretrain_smoothing=smoothing)
        result = pretrain_gate(model, prompts, cfg, Runtime.create(tmp_path / str(smoothing), device="cpu",
                                                                   progress=False), pad_id=0)
        assert result["gate_pretrain_accuracy"] == 1.0
        b = collate(prompts, 0)
        with torch.no_grad():
            gate = model.gate(model.gate_inputs(b["input_ids"], b["attention_mask"]))
        tops.append(float(gate.max(-1).values.mean()))
    assert tops[0] > 0.95 and 0.6 < tops[1] < 0.85  # smoothing 0.5 over 2 experts: target 0.75
    with pytest.raises(ConfigError, match="gate_pretrain_smoothing"):
        TrainConfig(gate_pretrain_smoothing=1.0)


def test_task_example_init_uses_each_experts_examples(tiny_tokenizer):
    mop = make_mop(tokenizer=tiny_tokenizer, prompt_init="task_examples", num_experts=2, prompts_per_expert=2)
    assert mop.expert_prompts.abs().max() == 0  # set by the pipeline, which has the data
    enc = Tokenizer(tiny_tokenizer, ["a", "b"], 64).encode_all(_examples(4))
    groups = []
    for expert in (0, 1):
        b = collate([e for e in enc if e.task_id == expert], 0)
        groups.append((b["input_ids"], b["attention_mask"]))
    mop.init_expert_prompts(groups)
    states = mop.prefix_states(*groups[1])[0]
    m = groups[1][1].unsqueeze(-1).float()
    torch.testing.assert_close(mop.expert_prompts[2:], (states * m).sum(1) / m.sum(1))
    assert (mop.expert_prompts[0] - mop.expert_prompts[2]).abs().max() > 1e-4
    with pytest.raises(ConfigError, match="needs 2 groups"):
        mop.init_expert_prompts()
    with pytest.raises(ConfigError, match="2 examples per expert"):
        mop.init_expert_prompts([(g[0][:1], g[1][:1]) for g in groups])


def test_gate_init_is_seeded_and_old_adapters_load(tmp_path, tiny_tokenizer):
    a, b = make_mop(init_seed=3), make_mop(init_seed=3)
    torch.testing.assert_close(a.gate.fc1.weight, b.gate.fc1.weight)
    assert (make_mop(init_seed=4).gate.fc1.weight - a.gate.fc1.weight).abs().max() > 0
    state = a.adapter_state()
    del state["gate.strength"]  # saved before the strength existed
    b.gate.strength.data.fill_(0.25)
    b.load_adapter_state(state)
    assert float(b.gate.strength) == 0.25


def test_routing_stats():
    one_each = routing_stats(torch.eye(4).tolist())
    assert one_each["experts_used"] == 4 and one_each["task_expert_mi"] == pytest.approx(2.0, abs=1e-6)
    alike = routing_stats([[0.7, 0.3, 0.0, 0.0]] * 4)
    assert alike["experts_used"] == 2 and alike["task_expert_mi"] == pytest.approx(0.0, abs=1e-6)
    assert alike["top_weight"] == pytest.approx(0.7)


def test_stage_store_shares_baseline_across_gate_variants_and_log_records_both(tmp_path, tiny_model_dir):
    log = tmp_path / "log"
    first = tmp_path / "runs" / "reference"
    out = run_cli("train", "--model", str(tiny_model_dir), *ARGS, "--seeds", "0,1", "-o", str(first),
                  "--experiment-log", str(log), "--note", "reference")
    assert out.returncode == 0, out.stderr[-3000:]
    second = tmp_path / "runs" / "half-strength"
    out = run_cli("train", "--model", str(tiny_model_dir), *ARGS, "--seeds", "0,1", "-o", str(second),
                  "--gate-strength", "0.5", "--gate-pretrain-smoothing", "0.2",
                  "--experiment-log", str(log), "--note", "half strength")
    assert out.returncode == 0, out.stderr[-3000:]
    for seed in (0, 1):
        trained = {stage for stage, _ in step_records(second / f"seed-{seed}")}
        assert trained == {"mops"}  # recovery and baseline came from the store
        a, b = (json.loads((run / f"seed-{seed}" / "results.json").read_text()) for run in (first, second))
        assert a["baseline"]["final"] == b["baseline"]["final"]
        assert a["mops"]["final"]["ppl"] != b["mops"]["final"]["ppl"]
        assert b["settings"]["mop"]["gate_strength"] == 0.5
    records = [json.loads(line) for line in (log / "log.jsonl").read_text().splitlines()]
    assert [r["name"] for r in records] == ["reference", "half-strength"]
    rec = records[1]
    assert rec["run_dir"] == "../runs/half-strength" and rec["seeds"] == [0, 1] and len(rec["gate"]) == 2
    base, mop = rec["ppl"]["baseline"]["overall"], rec["ppl"]["mops"]["overall"]
    assert rec["gain_percent"]["overall"] == pytest.approx([100 * (x - y) / x for x, y in zip(base, mop)])
    index = (log / "index.md").read_text()
    assert "[half-strength](../runs/half-strength)" in index and "half strength" in index
    # across the two folders: the same base, data order and test set, so `mops compare` pairs them
    out = run_cli("compare", f"{first}:mops", f"{second}:mops", "-o", str(tmp_path / "cmp.json"))
    assert out.returncode == 0, out.stderr[-3000:]
    cmp = json.loads((tmp_path / "cmp.json").read_text())
    ours = [json.loads((run / f"seed-{s}" / "results.json").read_text())["mops"]["final"]["ppl"]["overall"]["ppl"]
            for s in (0, 1) for run in (first, second)]
    assert cmp["paired"]["gain_percent"]["overall"]["per_seed"] == pytest.approx(
        [100 * (x - y) / x for x, y in zip(ours[::2], ours[1::2])])
    assert cmp["settings_differ"] == {"mop.gate_strength": [1.0, 0.5], "train.gate_pretrain_smoothing": [0.0, 0.2]}
    assert "mops@reference" in (tmp_path / "cmp.md").read_text() and "mop.gate_strength: 1.0 -> 0.5" in out.stderr
    bad = run_cli("compare", f"{first}:mops", f"{second}:lora")
    assert bad.returncode == 2 and bad.stderr.count("\n") <= 2 and "no method 'lora'" in bad.stderr
    bad = run_cli("train", "--model", str(tiny_model_dir), "--gate-strength", "strong", "-o", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--gate-strength" in bad.stderr and "not a valid float" in bad.stderr


def test_experiment_record_of_a_baseline_only_run_replaces_by_name(tmp_path):
    ppl = {"overall": {"ppl": 10.0}, "per_task": {"t": {"ppl": 10.0}}}
    result = RunResult(tasks=["t"], input_prompts_only=Evaluation(0, ppl),
                       methods={"baseline": MethodResult(final=Evaluation(5, ppl))})
    rec = experiment_record("lr-sweep", "baseline lr 3e-2", {}, {0: result, 1: result}, tmp_path / "runs" / "x")
    assert "gain_percent" not in rec and rec["ppl"]["baseline"]["overall"] == [10.0, 10.0]
    append_record(tmp_path / "log", rec)
    append_record(tmp_path / "log", {**rec, "note": "again"})
    lines = (tmp_path / "log" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["note"] == "again"
    assert "10.00 +- 0.00" in (tmp_path / "log" / "index.md").read_text()


def test_experiment_record_and_summary_keep_every_control_against_the_baseline(tmp_path):
    from mops.reports.run_report import seed_summary, summary_markdown

    def run(b: float, oracle: float, random_gate: float) -> RunResult:
        def ev(v: float) -> Evaluation:
            return Evaluation(5, {"overall": {"ppl": v}, "per_task": {"t": {"ppl": v}}})
        return RunResult(tasks=["t"], input_prompts_only=ev(20.0),
                         methods={"baseline": MethodResult(final=ev(b)), "oracle": MethodResult(final=ev(oracle)),
                                  "random_gate": MethodResult(final=ev(random_gate))})

    per_seed = {0: run(10.0, 9.0, 10.5), 1: run(20.0, 19.0, 20.0)}
    rec = experiment_record("controls", "controls", {}, per_seed, tmp_path / "runs" / "c")
    assert rec["ppl"]["oracle"]["overall"] == [9.0, 19.0] and "gain_percent" not in rec
    assert rec["other_gains"]["oracle vs baseline"]["overall"] == pytest.approx([10.0, 5.0])
    assert rec["other_gains"]["random_gate vs baseline"]["overall"] == pytest.approx([-5.0, 0.0])
    append_record(tmp_path / "log", rec)
    assert "oracle vs baseline 7.50 +- 3.54" in (tmp_path / "log" / "index.md").read_text()
    summary = seed_summary(per_seed, ["baseline", "oracle", "random_gate"])
    assert summary["method"] == "oracle" and set(summary["others"]) == {"random_gate vs baseline"}
    assert summary["others"]["random_gate vs baseline"]["gain_percent"]["overall"]["mean"] == pytest.approx(-2.5)
    assert "Paired baseline vs random_gate" in summary_markdown(summary)


def test_merge_routing_starts_at_the_frozen_model_and_routes_by_weight():
    mop = make_mop(routing="merge", num_experts=3, prompts_per_expert=4)
    assert mop.config.num_slots == 4 and tuple(mop.expert_prompts.shape) == (12, mop.lm.config.hidden_size)
    ids, mask = batch()
    valid = mask.bool()
    peak_gate(mop, 1)  # a sharp gate changes nothing while the experts are equal (all start at P^1's states)
    start = mop(ids, mask)
    mop.set_stage("recovery")
    torch.testing.assert_close(start[valid], mop(ids, mask)[valid], rtol=1e-4, atol=1e-5)
    mop.set_stage("mop")
    with torch.no_grad():
        mop.expert_prompts[4:8] += 0.5  # expert 1 only
    routed_to_1 = (mop(ids, mask) - start)[valid].abs().max()
    peak_gate(mop, 0, strength=30.0)
    routed_to_0 = (mop(ids, mask) - start)[valid].abs().max()
    assert routed_to_1 > 1e-2 and routed_to_0 < 1e-4
    plain = make_mop(routing="merge", num_experts=3, prompts_per_expert=4, use_gate=False)
    plain.load_adapter_state(mop.adapter_state())
    slots = plain._apply_experts(torch.zeros(3, 2, mop.lm.config.hidden_size), torch.zeros(3, mop.lm.config.hidden_size))
    torch.testing.assert_close(slots[0, :4], mop.expert_prompts.view(3, 4, -1).mean(0))  # no gate: the mean


def test_merge_routing_cached_forward_equals_full_forward_with_gradients():
    from mops.tuners.mops.prefix_cache import mop_logits_fn

    mop = make_mop(routing="merge", num_experts=3, prompts_per_expert=4)
    with torch.no_grad():
        mop.expert_prompts.add_(0.1 * torch.randn_like(mop.expert_prompts))
    mop.set_stage("mop")
    ids, mask = batch()
    full = mop(ids, mask)
    full[mask.bool()].pow(2).mean().backward()
    grad = mop.expert_prompts.grad.clone()
    mop.expert_prompts.grad = None
    states, avg = mop.prefix_states(ids, mask)
    cached = mop.forward_cached(states, mask, avg)
    torch.testing.assert_close(cached[mask.bool()], full[mask.bool()], rtol=1e-4, atol=1e-5)
    cached[mask.bool()].pow(2).mean().backward()
    torch.testing.assert_close(mop.expert_prompts.grad, grad, rtol=1e-4, atol=1e-6)
    assert callable(mop_logits_fn(mop))


def test_peft_baselines_train_save_and_leave_the_base_clean(tmp_path, tiny_model_dir):
    run = tmp_path / "peft"
    out = run_cli("train", "--model", str(tiny_model_dir), *ARGS, "--method", "baseline,lora,ia3,mops",
                  "-o", str(run), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    counts = {m: results[m]["trainable_parameters"] for m in ("baseline", "lora", "ia3", "mops")}
    # tiny llama: 4 layers, width 64, 2 kv heads of 16 -> LoRA r=2 on q (64->64) and v (64->32); IA3 scales q, v
    assert counts["lora"] == 4 * (2 * 64 + 64 * 2 + 2 * 64 + 32 * 2) and counts["ia3"] == 4 * (64 + 32)
    assert counts["baseline"] == 1 * 64  # merge routing without a gate: prompt tuning of the 1 slot (the experts' mean)
    assert counts["mops"] > 7 * 64  # every expert is free once the gate weights them per input, plus the gate
    for method, peft_type in (("lora", "LORA"), ("ia3", "IA3")):
        config = json.loads((run / method / "adapter" / "adapter_config.json").read_text())
        assert config["peft_type"] == peft_type and sorted(config["target_modules"]) == ["q_proj", "v_proj"]
        assert (run / method / "adapter" / "adapter_model.safetensors").is_file()
        assert results[method]["final"]["ppl"]["overall"]["ppl"] != results["baseline"]["final"]["ppl"]["overall"]["ppl"]
    # MoPs after the baseline, LoRA and IA3 were trained (and unloaded) equals MoPs alone, trained afresh in an
    # empty MOPS_HOME (nothing from the store): each method starts from a copy of the shared state, and nothing
    # of the others stays in the base or the prompts
    fresh = {**os.environ, "MOPS_HOME": str(tmp_path / "fresh-home")}
    alone = run_cli("train", "--model", str(tiny_model_dir), *ARGS, "--method", "mops", "-o", str(tmp_path / "alone"),
                    "--json", env=fresh)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert {stage for stage, _ in step_records(tmp_path / "alone")} == {"recovery", "mops"}  # trained, not read back
    solo, after = json.loads(alone.stdout)["mops"], json.loads(out.stdout)["mops"]
    assert solo["overall"]["ppl"] == pytest.approx(after["overall"]["ppl"], rel=1e-6)
    first = json.loads((tmp_path / "alone" / "results.json").read_text())["mops"]["losses"]
    assert first == pytest.approx(results["mops"]["losses"], rel=1e-6)
    assert "| baseline | lora | ia3 | mops | MoPs gain | mops vs lora |" in (run / "results.md").read_text()
    # lora_lr / ia3_lr move LoRA / IA3 only: the prompt stages come from the store, the peft ones train again
    faster = tmp_path / "peft-lr"
    out = run_cli("train", "--model", str(tiny_model_dir), *ARGS, "--method", "baseline,lora,ia3,mops",
                  "-o", str(faster), "--lora-lr", "0.05", "--ia3-lr", "0.1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert {stage for stage, _ in step_records(faster)} == {"lora", "ia3"}
    again = json.loads((faster / "results.json").read_text())
    for method in ("lora", "ia3"):
        assert again[method]["final"]["ppl"] != results[method]["final"]["ppl"]
    assert again["mops"]["final"] == results["mops"]["final"]


def test_matched_adapter_sizes_pick_the_nearest_count():
    kinds = {"q_proj": [(64, 64)] * 4, "v_proj": [(64, 32)] * 4, "down_proj": [(128, 64)] * 4}
    assert lora_count(kinds, ["q_proj", "v_proj"], 1) == 4 * (128 + 96)
    assert matched_lora_rank(kinds, ["q_proj", "v_proj"], 4 * 224 * 7 + 300) == 7  # 6,572: 7 beats 8
    assert matched_lora_rank(kinds, ["q_proj", "v_proj"], 4 * 224 * 7 + 600) == 8  # 6,872: nearer 7,168
    assert matched_lora_rank(kinds, ["q_proj", "v_proj"], 10) == 1  # never rank 0
    qv = ["q_proj", "v_proj"]
    assert matched_ia3_targets(kinds, 4 * 96, qv) == qv  # 384: down + v is 384 too; the configured targets win
    assert matched_ia3_targets(kinds, 4 * 96, ["down_proj"]) == ["down_proj", "v_proj"]
    assert matched_ia3_targets(kinds, 10**6, qv) == ["down_proj", "q_proj", "v_proj"]  # the most it can reach
    with pytest.raises(ConfigError, match="none of --peft-targets"):
        matched_lora_rank(kinds, ["w_pack"], 1000)


def test_match_parameters_sizes_lora_and_ia3_to_mops(tmp_path, tiny_model_dir):
    run = tmp_path / "matched"
    out = run_cli("train", "--model", str(tiny_model_dir), *ARGS, "--method", "baseline,mops,lora,ia3",
                  "--match-parameters", "-o", str(run))
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    mops = results["mops"]["trainable_parameters"]
    lora, ia3 = results["lora"], results["ia3"]
    per_rank = 4 * (64 + 64 + 64 + 32)  # tiny llama: q 64->64, v 64->32 in 4 layers
    assert lora["adapter"] == {"r": round(mops / per_rank), "targets": ["q_proj", "v_proj"], "matched_to": mops}
    assert lora["trainable_parameters"] == lora["adapter"]["r"] * per_rank
    assert abs(lora["trainable_parameters"] - mops) <= per_rank / 2
    assert ia3["adapter"]["matched_to"] == mops and "r" not in ia3["adapter"]
    assert len(ia3["adapter"]["targets"]) > 2 and ia3["trainable_parameters"] > 4 * (64 + 32)
    config = json.loads((run / "lora" / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == lora["adapter"]["r"]


def test_prompt_gate_input_ignores_the_response_and_matches_generation(tiny_tokenizer):
    from mops.evaluation.perplexity import device_batch, loss_positions, token_nll
    from mops.tuners.mops.prefix_cache import mop_logits_fn, open_prefix_cache

    tok = Tokenizer(tiny_tokenizer, ["a", "b"], 256)  # long enough: no truncation of the prompts
    answers = [Example("a", "Name a river of Europe.", "", "The Danube."),
               Example("a", "Name a river of Europe.", "", "The Rhine flows north through several countries.")]
    full = tok.encode_all(answers)
    prompt = tok.encode_all(answers[:1], prompt_only=True)
    for gate_input, same in (("prompt", True), ("sequence", False)):
        mop = make_mop(tokenizer=tiny_tokenizer, gate_input=gate_input)
        b = collate(full, 0)
        mask = mop.gate_token_mask(b["attention_mask"], b["labels"])
        avg = mop.prefix_states(b["input_ids"], b["attention_mask"], mask)[1]
        assert torch.allclose(avg[0], avg[1], atol=1e-5) is same  # two answers to the same prompt
        p = collate(prompt, 0)
        at_generation = mop.gate_inputs(p["input_ids"], p["attention_mask"])[0]
        assert torch.allclose(avg[0], at_generation, atol=1e-5) is same
    mop = make_mop(tokenizer=tiny_tokenizer, gate_input="prompt")
    peak_gate(mop, 1, strength=1.0)
    with torch.no_grad():
        mop.gate.fc1.weight.normal_()
    mop.set_stage("mop")
    batch = device_batch(full, [0, 1], 0, "cpu")
    positions = loss_positions(batch["labels"])
    cache = open_prefix_cache(mop, full, 0)
    nll = [token_nll(fn(batch, positions), batch["labels"], positions)[0] for fn in (mop_logits_fn(mop, cache),
                                                                                     mop_logits_fn(mop))]
    torch.testing.assert_close(nll[0], nll[1], rtol=1e-4, atol=1e-5)  # padding positions excluded
    with pytest.raises(ConfigError, match="gate_input must be one of"):
        MoPConfig(gate_input="instruction")


def test_mops_on_a_frozen_lora_model(tmp_path, tiny_model_dir):
    run = tmp_path / "table8"
    out = run_cli("train", "--model", str(tiny_model_dir), *ARGS, "--method", "lora,lora_mops", "-o", str(run), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    from safetensors.torch import load_file

    lora = load_file(str(run / "lora" / "adapter" / "adapter_model.safetensors"))
    frozen = load_file(str(run / "lora_mops" / "lora_adapter" / "adapter_model.safetensors"))
    assert lora.keys() == frozen.keys() and all(torch.equal(lora[k], frozen[k]) for k in lora)  # LoRA stayed frozen
    assert (run / "lora_mops" / "adapter" / "adapter_config.json").is_file()
    experts, gate = 7 * 1 * 64, 64 * 256 + 256 + 256 * 7 + 7  # 7 experts x 1 prompt x width 64; gate MLP
    assert results["lora_mops"]["trainable_parameters"] == experts + gate  # LoRA is not trained again
    assert results["lora_mops"]["final"]["ppl"]["overall"]["ppl"] != results["lora"]["final"]["ppl"]["overall"]["ppl"]
    # lora_mops trains from the prefix cache, keyed by the frozen LoRA weights: its train and test caches,
    # besides the test cache the gate matrix after pretraining read (without LoRA). Exactness: test_prefix_cache
    caches = Path(os.environ["MOPS_HOME"]) / "activations"
    assert len([c for c in caches.iterdir() if not c.name.startswith(".")]) == 3
    bad = run_cli("train", "--model", str(tiny_model_dir), *ARGS, "--method", "lora_mops", "-o", str(tmp_path / "x"))
    assert bad.returncode == 2 and "lora_mops trains on the finished lora stage" in bad.stderr
