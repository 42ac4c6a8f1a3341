"""The train-step benchmark runs end to end (on a tiny model) and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_step_benchmark_writes_json(tmp_path, tiny_model_dir):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--model", str(tiny_model_dir), "--batch-sizes",
         "2", "--steps", "1", "--warmup", "1", "--max-length", "64", "--output", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(out.read_text())
    configs = {r["config"] for r in payload["results"] if "config" in r}
    assert configs == {"mops core (full logits)", "mops", "mops cached", "mops cached, grouped",
                       "prompts@L cached (no gate)", "prompts@0", "peft PromptTuning@0"}
    assert all(r["tokens_per_s"] > 0 for r in payload["results"] if "config" in r)
    ratios = [r for r in payload["results"] if "gate_share_of_step" in r][0]
    assert ratios["tokens_per_s_cached_over_core"] > 0
    assert payload["prefix_cache_size_full_datasets"]["dolly"]["examples"] == 5000


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
