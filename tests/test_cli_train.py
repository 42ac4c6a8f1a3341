"""`mops train` / `mops generate` end to end on a tiny model: files written, resume skips finished stages."""

from __future__ import annotations

import json

import pytest

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
