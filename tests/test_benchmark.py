"""The train-step benchmark runs end to end (on a tiny model) and writes its JSON."""

from __future__ import annotations

import json
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
