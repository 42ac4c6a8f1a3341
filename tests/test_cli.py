"""The CLI: JSON output, files written, errors as one line with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.test_data import DOLLY_ROW, write_lines


def run_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mops.cli.app", *args], capture_output=True, text=True, env=env)


def test_data_stats_json():
    out = run_cli("data", "stats", "--data", "sni", "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["tasks"]["task1190_add_integer_to_list"] == {"train": 176, "test": 20}


def test_bad_data_error_is_one_line(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [DOLLY_ROW, {**DOLLY_ROW, "response": ""}])
    out = run_cli("data", "stats", "--data", str(path))
    assert out.returncode == 2
    assert f"{path}:2: field 'response' is empty" in out.stderr.replace("\n", "")
    assert "Traceback" not in out.stderr


def test_eval_writes_json(tmp_path, tiny_model_dir):
    rows = [{**DOLLY_ROW, "instruction": f"Name {c} colour number {i}.", "category": c} for i in range(10) for c in ("x", "y")]
    data = write_lines(tmp_path / "d.jsonl", rows)
    out_file = tmp_path / "res.json"
    out = run_cli("eval", "--model", str(tiny_model_dir), "--data", str(data), "--max-length", "64",
                  "--batch-size", "4", "--output", str(out_file), "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out_file.read_text())
    assert set(payload["per_task"]) == {"x", "y"} and payload["examples"] == 2
    assert payload["overall"]["ppl"] > 1 and payload == json.loads(out.stdout)


def test_unknown_model_error(tmp_path):
    out = run_cli("eval", "--model", "nonexistent-model", "--limit-per-task", "1")
    assert out.returncode == 2 and "unknown model 'nonexistent-model'" in out.stderr
