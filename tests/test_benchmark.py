"""The benchmarks run end to end on a tiny model: the GPU run's dry run (throughput table included), bf16 vs fp32."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_run_dry_run_writes_every_part(tmp_path):
    """`benchmarks/gpu_run.sh OUT --dry-run`: the GPU run at tiny size on the CPU, with the packages the GPU
    image lacks made unimportable: device tests, the throughput table (eager and compiled; the eager backend
    captures graphs without a C compiler), a paired cell, and run.json with every step's status."""
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), str(out), "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PYTHON": sys.executable, "MOPS_HOME": str(tmp_path / "home")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["dry_run"] is True and [s["step"] for s in run["steps"]] == ["device_tests", "cell", "throughput"]
    assert all(s["rc"] == 0 for s in run["steps"]), run
    suite = ElementTree.parse(out / "device_tests.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) >= 1 and int(suite.get("failures")) == int(suite.get("errors")) == 0

    payload = json.loads((out / "throughput.json").read_text())
    rows = [r for r in payload["results"] if "config" in r]
    assert {r["config"] for r in rows} == {"mops core (full logits)", "mops", "mops cached", "mops cached, grouped",
                                           "prompts@L cached (no gate)", "prompts@0", "peft PromptTuning@0"}
    assert {r["mode"] for r in rows} == {"eager", "compiled"} and len(rows) == 14
    assert all(r["tokens_per_s"] > 0 and r["flops_per_token"] > 0 and r["mfu"] is None for r in rows)
    training_path = ("mops", "mops cached", "mops cached, grouped", "prompts@L cached (no gate)", "prompts@0")
    assert all(r["compiles_during_timing"] == 0 for r in rows if r["config"] in training_path)  # warm-up compiles
    by = {(r["config"], r["mode"]): r for r in rows}
    # the input-layer prompts backpropagate through every layer: more FLOPs per token than MoPs above its layer
    assert by[("prompts@0", "eager")]["flops_per_token"] > by[("mops cached", "eager")]["flops_per_token"]
    ratios = [r for r in payload["results"] if "gate_share_of_step" in r]
    assert len(ratios) == 2 and ratios[0]["tokens_per_s_cached_over_core"] > 0
    assert payload["prefix_cache_size_full_datasets"]["dolly"]["examples"] == 5000

    with tarfile.open(out / "cell.tgz") as tar:
        summary = json.load(tar.extractfile("./summary.json"))
    assert summary["seeds"] == [0, 1] and len(summary["gain_percent"]["overall"]["per_seed"]) == 2


def test_step_flops_counts_the_model_shapes():
    """One example, no attention cost to speak of: the linear maps' FLOPs by hand."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_step", ROOT / "benchmarks" / "train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from types import SimpleNamespace

    from mops.data.tokenization import IGNORE_INDEX, Encoded

    cfg = SimpleNamespace(hidden_size=8, num_attention_heads=2, num_key_value_heads=1, intermediate_size=16,
                          vocab_size=10, head_dim=4)
    enc = Encoded(input_ids=[1, 2, 3], labels=[IGNORE_INDEX, IGNORE_INDEX, 3], task_id=0)
    linear = 2 * (2 * 8 * 8 + 2 * 8 * 4 + 3 * 8 * 16)  # q, o; k, v; gate, up, down
    positions = 2 + 3
    attention = 4 * 2 * 4 * positions * (positions + 1) / 2
    head = 2 * 8 * 10 * 1  # one labelled position
    assert bench.step_flops(cfg, [enc], 2, 3, 0, False) == 3 * (linear * positions + attention) + 2 * head
    assert bench.step_flops(cfg, [enc], 2, 3, 2, False) == (3 * (linear * positions + attention)
                                                         + 2 * (linear * positions + 2 * attention) + 2 * head)


def test_bf16_benchmark_compares_both_dtypes(tmp_path, tiny_model_dir):
    out = tmp_path / "bf16"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bf16_cpu.py"), "--model", str(tiny_model_dir), "--total", "70",
         "--steps", "2", "--seeds", "0", "--output", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "MOPS_HOME": str(tmp_path / "home")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads((out / "results.json").read_text())
    assert set(payload["dtypes"]) == {"float32", "bfloat16"}
    for dtype in ("float32", "bfloat16"):
        run = json.loads((out / dtype / "results.json").read_text())
        assert run["base"]["dtype"] == dtype  # each half really ran in its dtype
        assert payload["dtypes"][dtype]["step_seconds_median"]["mops"] > 0
    assert payload["speedup_fp32_over_bf16"]["mops"] > 0 and "fp32 / bf16" in (out / "results.md").read_text()
