"""`mops train` / `mops generate` end to end on a tiny model: files written, resume skips finished stages."""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_cli import run_cli

ARGS = ["--data", "dolly", "--total", "70", "--max-length", "48", "--num-experts", "7", "--prompts-per-expert", "1",
        "--injection-layer", "2", "--steps", "4", "--batch-size", "2", "--recovery-steps", "2",
        "--gate-pretrain-steps", "20", "--gate-pretrain-examples", "14", "--eval-every", "2", "--checkpoint-every", "2"]


def step_records(run) -> list[tuple[str, int]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["stage"], r["step"]) for r in map(json.loads, lines) if "loss" in r]


def test_train_writes_everything_and_resumes(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    out = run_cli("train", "--model", str(tiny_model_dir), *ARGS, "-o", str(run), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert set(summary) == {"baseline", "mops", "run_dir"} and summary["mops"]["overall"]["ppl"] > 1
    for name in ("results.md", "results.json", "gate_pretrained.png", "gate_final.png", "loss.png",
                 "baseline/adapter/adapter_model.safetensors", "mops/adapter/adapter_config.json"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    results = json.loads((run / "results.json").read_text())
    assert len(results["mops"]["losses"]) == 4 and len(results["mops"]["evals"]) == 1
    gate = results["mops"]["final"]["gate"]
    assert len(gate) == 7 and all(abs(sum(row) - 1) < 1e-4 for row in gate)
    assert "MoPs gain" in (run / "results.md").read_text()
    config = json.loads((run / "baseline" / "adapter" / "adapter_config.json").read_text())
    assert config["config"]["use_gate"] is False and config["base"]["num_hidden_layers"] == 4
    steps_before = step_records(run)
    assert steps_before.count(("mops", 4)) == 1

    again = run_cli("train", "--model", str(tiny_model_dir), *ARGS, "-o", str(run), "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert step_records(run) == steps_before  # finished stages are not trained again
    assert json.loads(again.stdout)["mops"] == summary["mops"]

    scored = run_cli("eval", "--model", str(tiny_model_dir), "--adapter", str(run / "mops" / "adapter"), "--data",
                     "dolly", "--total", "70", "--max-length", "48", "--json")
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert json.loads(scored.stdout)["overall"]["ppl"] == pytest.approx(summary["mops"]["overall"]["ppl"], rel=1e-4)

    gen = run_cli("generate", "Name a colour.", "Name a river.", "--model", str(tiny_model_dir), "--adapter",
                  str(run / "mops" / "adapter"), "--max-new-tokens", "5", "--json")
    assert gen.returncode == 0, gen.stderr[-3000:]
    answers = json.loads(gen.stdout)
    assert [a["instruction"] for a in answers] == ["Name a colour.", "Name a river."]
    assert all(abs(sum(a["gate"]) - 1) < 1e-4 and len(a["gate"]) == 7 for a in answers)


def test_train_rejects_bad_method_and_layer(tmp_path, tiny_model_dir):
    out = run_cli("train", "--model", str(tiny_model_dir), "--method", "dora", "-o", str(tmp_path))
    assert out.returncode == 2 and "--method must be both or a comma-separated list" in out.stderr and "dora" in out.stderr
    out = run_cli("train", "--model", str(tiny_model_dir), "--total", "70", "--injection-layer", "9", "-o",
                  str(tmp_path / "run"))
    assert out.returncode == 2 and "injection_layer must be in [0, 3]" in out.stderr
    assert not (tmp_path / "run").exists()  # refused after loading the model, before writing anything


def test_paired_comparison_over_seeds(tmp_path, tiny_model_dir):
    run = tmp_path / "seeds"
    out = run_cli("train", "--model", str(tiny_model_dir), *ARGS, "--seeds", "3,4", "-o", str(run), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["seeds"] == [3, 4] and (run / "summary.md").is_file()
    gains = []
    for seed in (3, 4):
        final = json.loads((run / f"seed-{seed}" / "results.json").read_text())
        base, mop = (final[m]["final"]["ppl"]["overall"]["ppl"] for m in ("baseline", "mops"))
        gains.append(100 * (base - mop) / base)
    overall = summary["gain_percent"]["overall"]
    assert overall["per_seed"] == pytest.approx(gains)
    assert overall["mean"] == pytest.approx(sum(gains) / 2)
    assert len(summary["gain_percent"]) == 8  # 7 tasks + overall
    bad = run_cli("train", "--model", str(tiny_model_dir), "--seeds", "1,x", "-o", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--seeds must be distinct integers" in bad.stderr


def test_train_on_a_compressed_base_and_adapter_needs_the_same_compression(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    out = run_cli("train", "--model", str(tiny_model_dir), "--compress", "magnitude:2:4+int8", *ARGS,
                  "--method", "mops", "-o", str(run), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.loads((run / "mops" / "adapter" / "adapter_config.json").read_text())
    assert config["base"]["compression"] == "magnitude-2:4+int8"

    args = ["eval", "--model", str(tiny_model_dir), "--adapter", str(run / "mops" / "adapter"), "--data", "dolly",
            "--total", "70", "--max-length", "48", "--json"]
    scored = run_cli(*args, "--compress", "magnitude:2:4+int8")
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert json.loads(scored.stdout)["overall"]["ppl"] == pytest.approx(json.loads(out.stdout)["mops"]["overall"]["ppl"], rel=1e-3)
    # without --compress the adapter's own base is rebuilt (here: read from the cache), with the same numbers
    same = run_cli(*args)
    assert same.returncode == 0, same.stderr[-3000:]
    assert json.loads(same.stdout)["overall"]["ppl"] == json.loads(scored.stdout)["overall"]["ppl"]
    refused = run_cli(*args, "--compress", "magnitude:0.5")  # another base than the adapter was trained on
    assert refused.returncode == 2 and "was trained on" in refused.stderr and "magnitude:2:4+int8" in refused.stderr


def test_controls_train_paired_with_the_baseline(tmp_path, tiny_model_dir):
    """The routing controls: a frozen random gate stays as initialised, the unpretrained gate learns from that
    initialisation, the oracle routes by task (no gate recorded), each with its gain over the baseline; ROUGE-L
    is scored through the same routing."""
    from safetensors.torch import load_file

    from mops.models import load_base_model
    from mops.tuners.mops.config import MoPConfig
    from mops.tuners.mops.model import MoPModel

    run = tmp_path / "run"
    methods = "baseline,oracle,random_gate,mops_unpretrained"
    out = run_cli("train", "--model", str(tiny_model_dir), *ARGS, "--method", methods, "--eval-metrics", "ppl,rougeL",
                  "--eval-max-new-tokens", "3", "-o", str(run), "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    fresh = MoPModel(load_base_model(str(tiny_model_dir)), MoPConfig(num_experts=7, prompts_per_expert=1,
                                                                      injection_layer=2))
    initial = {k: v for k, v in fresh.adapter_state().items() if k.startswith("gate.")}
    pretrained = load_file(str(run / "stages" / "gate_pretrain" / "adapter.safetensors"))
    frozen, learned = (load_file(str(run / m / "adapter" / "adapter_model.safetensors"))
                       for m in ("random_gate", "mops_unpretrained"))
    for key, value in initial.items():
        assert torch.equal(frozen[key], value), key  # frozen: still the initial gate
    assert any(not torch.equal(learned[k], initial[k]) for k in initial)  # trained from there ...
    assert any(not torch.allclose(pretrained[k], initial[k]) for k in initial if k in pretrained)  # ... not pretrained
    hidden = fresh.expert_prompts.shape[-1]
    assert results["random_gate"]["trainable_parameters"] == results["oracle"]["trainable_parameters"] == 7 * hidden
    assert results["mops_unpretrained"]["trainable_parameters"] > 7 * hidden
    assert "gate" not in results["oracle"]["final"] and "gate" in results["random_gate"]["final"]
    assert results["oracle"]["final"]["generation"]["overall"]["rougeL"] >= 0
    text = (run / "results.md").read_text()
    assert all(f"{m} vs baseline" in text for m in ("oracle", "random_gate", "mops_unpretrained"))

    few = run_cli("train", "--model", str(tiny_model_dir), *ARGS[:6], "--num-experts", "3", *ARGS[8:], "--method",
                  "baseline,oracle", "-o", str(tmp_path / "few"))
    assert few.returncode == 2 and "oracle routes each task to its own expert" in few.stderr
