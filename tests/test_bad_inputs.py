"""Bad input and faults, as a user meets them from the command line: exit status 2 and one `error:` line that
names the file, line, field or setting; no traceback; nothing already done lost. One table: a new case is one line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tests.conftest import make_tiny_tokenizer, save_tiny_model
from tests.test_cli import run_cli
from tests.test_cli_train import ARGS, step_records
from tests.test_data import DOLLY_ROW, write_lines

ADAPTER = "mops/adapter"


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    """A workspace: a tiny model, one finished run (and its adapter), and bad files made from them."""
    root = tmp_path_factory.mktemp("bad_inputs")
    env = {**os.environ, "MOPS_HOME": str(root / "home")}
    model = save_tiny_model(root / "tiny", make_tiny_tokenizer())
    run = root / "run"
    out = run_cli("train", "--model", str(model), *ARGS, "-o", str(run), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    paths = {"model": model, "run": run, "adapter": run / ADAPTER}

    def adapter_copy(name: str) -> Path:
        target = root / name
        shutil.copytree(run / ADAPTER, target)
        return target

    broken = adapter_copy("truncated_adapter")
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    paths["truncated_adapter"] = broken
    for field, value in (("num_experts", 3), ("injection_layer", 1)):
        edited = adapter_copy(f"edited_{field}")
        config = json.loads((edited / "adapter_config.json").read_text())
        config["config"][field] = value
        (edited / "adapter_config.json").write_text(json.dumps(config))
        paths[f"edited_{field}"] = edited
    legacy = adapter_copy("legacy_edited")  # saved before digests existed: no metadata, then edited
    save_file(load_file(str(legacy / "adapter_model.safetensors")), str(legacy / "adapter_model.safetensors"))
    config = json.loads((legacy / "adapter_config.json").read_text())
    config["config"]["num_experts"] = 3
    (legacy / "adapter_config.json").write_text(json.dumps(config))
    paths["legacy_edited"] = legacy

    rows = "\n".join(json.dumps({**DOLLY_ROW, "instruction": f"Q{i}", "category": c}) for i in range(6) for c in "xy")
    paths["latin1"] = root / "latin1.jsonl"
    paths["latin1"].write_bytes(rows.encode() + b'\n{"instruction": "caf\xe9 SECRET", "response": "r", "category": "x"}\n')
    paths["empty"] = root / "empty.jsonl"
    paths["empty"].write_text("")
    paths["one"] = write_lines(root / "one.jsonl", [DOLLY_ROW])
    paths["latin1_json"] = root / "bad.json"
    paths["latin1_json"].write_bytes(b'[\n {"instruction": "caf\xe9"}\n]')
    return paths


def _train(ws, *extra) -> list[str]:
    return ["train", "--model", str(ws["model"]), *ARGS, *extra]


# (case, argv from the workspace, text the one-line error must contain)
CASES = [
    ("changed lr relabels results", lambda w: _train(w, "-o", str(w["run"]), "--lr", "0.5"),
     "holds a run with other settings (train.lr: 0.01 -> 0.5)"),
    ("changed experts", lambda w: _train(w, "-o", str(w["run"]), "--num-experts", "3"), "mop.num_experts: 7 -> 3"),
    ("changed steps", lambda w: _train(w, "-o", str(w["run"]), "--steps", "30"), "train.steps: 4 -> 30"),
    ("truncated adapter", lambda w: ["eval", "--model", str(w["model"]), "-a", str(w["truncated_adapter"])],
     "adapter_model.safetensors: damaged adapter weights"),
    ("adapter config num_experts edited", lambda w: ["eval", "--model", str(w["model"]), "-a", str(w["edited_num_experts"])],
     "adapter_config.json was changed after the adapter was saved (num_experts is 3, saved as 7)"),
    ("adapter config injection_layer edited", lambda w: ["eval", "--model", str(w["model"]), "-a", str(w["edited_injection_layer"])],
     "(injection_layer is 1, saved as 2)"),
    ("legacy adapter disagrees with its tensors", lambda w: ["eval", "--model", str(w["model"]), "-a", str(w["legacy_edited"])],
     "adapter_config.json disagrees with adapter_model.safetensors (expert_prompts has shape [7, 64], the config implies [3, 64]"),
    ("non-UTF-8 JSONL", lambda w: ["data", "stats", "--data", str(w["latin1"])], "latin1.jsonl:13: not valid UTF-8 (byte 0xe9 at column 21)"),
    ("non-UTF-8 JSON", lambda w: ["data", "stats", "--data", str(w["latin1_json"])], "bad.json:2:22: not valid UTF-8 (byte 0xe9)"),
    ("empty data: train", lambda w: _train(w, "--data", str(w["empty"]), "-o", str(w["run"].parent / "new1")),
     "empty.jsonl: no examples (it holds no records)"),
    ("empty data: eval", lambda w: ["eval", "--model", str(w["model"]), "--data", str(w["empty"])], "no examples"),
    ("one record: no test split", lambda w: ["eval", "--model", str(w["model"]), "--data", str(w["one"])],
     "task(s) with too few examples for a train and a test split (open_qa: 1 selected"),
    ("zero total", lambda w: ["eval", "--model", str(w["model"]), "--total", "0"], "--total"),
    ("negative total", lambda w: _train(w, "--total", "-5", "-o", str(w["run"].parent / "new2")), "--total"),
    ("zero limit per task", lambda w: ["eval", "--model", str(w["model"]), "--limit-per-task", "0"], "--limit-per-task"),
    ("zero eval limit in training", lambda w: _train(w, "--eval-limit-per-task", "0", "-o", str(w["run"].parent / "new1")),
     "TrainConfig.eval_limit_per_task must be >= 1"),
    ("zero eval batch", lambda w: ["eval", "--model", str(w["model"]), "-b", "0"], "--batch-size"),
    ("zero new tokens", lambda w: ["generate", "hi", "--model", str(w["model"]), "--max-new-tokens", "0"], "--max-new-tokens"),
    ("cuda on a CPU torch", lambda w: ["eval", "--model", str(w["model"]), "--device", "cuda"], "--device cuda: this torch"),
    ("unknown device", lambda w: ["eval", "--model", str(w["model"]), "--device", "tpu9"], "--device 'tpu9'"),
    ("unknown dtype", lambda w: ["eval", "--model", str(w["model"]), "--dtype", "bogus"], "--dtype 'bogus' is not a dtype"),
    ("unknown engine", lambda w: ["federate", "--engine", "bogus", "-o", str(w["run"].parent / "fed")],
     "--engine must be one of"),
    ("output is a file", lambda w: _train(w, "-o", str(w["empty"])), "is a file, not a run folder"),
    ("GPU share without a GPU", lambda w: ["federate", "--client-gpus", "0.5", "-o", str(w["run"].parent / "fed")],
     "--client-gpus 0.5: no CUDA GPU is visible"),
    ("grid file with a built-in experiment", lambda w: ["reproduce", "budget", "--grid", str(w["empty"]), "--list"],
     "a grid file runs as `mops reproduce grid --grid FILE`, not with the built-in experiment 'budget'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line(ws, case):
    _, argv, expected = case
    out = run_cli(*argv(ws))
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "SECRET" not in out.stderr + out.stdout
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert expected in lines[0], lines[0]
    assert not (ws["run"].parent / "new1").exists() and not (ws["run"].parent / "new2").exists()  # no trace left
    assert not (ws["run"].parent / "fed").exists()


def test_refused_rerun_leaves_the_run_untouched_and_overwrite_replaces_it(ws, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ws["run"], run)
    before = (run / "results.json").read_text(), (run / "run_config.json").read_text()
    out = run_cli(*_train(ws, "-o", str(run), "--lr", "0.5"))
    assert out.returncode == 2 and ((run / "results.json").read_text(), (run / "run_config.json").read_text()) == before
    out = run_cli(*_train(ws, "-o", str(run), "--lr", "0.5", "--overwrite"))
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["settings"]["train"]["lr"] == 0.5 and json.loads((run / "run_config.json").read_text())["train"]["lr"] == 0.5
    assert results["mops"]["losses"] != json.loads(before[0])["mops"]["losses"]  # trained again, not relabelled
    assert results["base"]["fingerprint"] and results["versions"]["torch_threads"] >= 1


def test_skip_invalid_skips_non_utf8_lines(ws):
    out = run_cli("data", "stats", "--data", str(ws["latin1"]), "--skip-invalid")
    assert out.returncode == 0, out.stderr
    text = out.stderr.replace("\n", "")
    assert "SECRET" not in text and "skipped 1 invalid records" in text and "latin1.jsonl:13: not valid UTF-8" in text


def test_truncated_last_checkpoint_falls_back_to_the_previous_one(ws, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ws["run"], run)
    shutil.rmtree(run / "stages" / "mops")  # as if killed after the checkpoint of step 4, before the stage ended
    ckpt = run / "checkpoints" / "mops"
    assert sorted(p.name for p in ckpt.glob("step-*")) == ["step-000002", "step-000004"]
    weights = ckpt / "step-000004" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    out = run_cli(*_train(ws, "-o", str(run), "--json"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step-000004 is damaged" in out.stderr and "resuming from" in out.stderr
    assert (ckpt / "damaged-step-000004").is_dir()
    steps = step_records(run)
    assert [s for s in steps if s[0] == "mops"] == [("mops", 1), ("mops", 2), ("mops", 3), ("mops", 4)]  # logged once
    original = json.loads((ws["run"] / "results.json").read_text())["mops"]
    assert json.loads((run / "results.json").read_text())["mops"]["losses"] == pytest.approx(original["losses"], abs=1e-9)


def _baseline_steps(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    records = [json.loads(line) for line in lines if line.endswith("}")]
    return [r["step"] for r in records if r.get("stage") == "baseline" and "loss" in r]


def _interrupt_when(args: list[str], ready) -> str:
    """Start `mops <args>`, send SIGINT once `ready()` holds; returns stderr after checking exit status 130."""
    # SIGINT as a terminal delivers it: a test suite started in the background (`pytest &`) inherits SIGINT
    # ignored, and Python keeps an inherited SIG_IGN
    proc = subprocess.Popen([sys.executable, "-m", "mops.cli.app", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not ready() and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "error: interrupted (Ctrl-C)" in err
    return err


def test_ctrl_c_exits_130_and_the_run_resumes(ws, tmp_path):
    run = tmp_path / "run"
    args = _train(ws, "-o", str(run), "--steps", "1000000", "--checkpoint-every", "1", "--eval-every", "0")
    _interrupt_when(args, lambda: len(_baseline_steps(run)) >= 3)
    first = max(_baseline_steps(run))
    _interrupt_when(args, lambda: bool(_baseline_steps(run)) and max(_baseline_steps(run)) >= first + 3)
    steps = _baseline_steps(run)
    assert steps == list(range(1, max(steps) + 1))  # resumed from its checkpoint; every step logged once


def test_generate_warns_when_it_shortens_an_instruction(ws):
    long = " ".join(["word"] * 700)  # more than the tiny model's 512-token context
    out = run_cli("generate", long, "--model", str(ws["model"]), "--max-new-tokens", "4", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "shortened to" in out.stderr and "512 tokens" in out.stderr
    assert "clean_up_tokenization_spaces" not in out.stderr


def test_same_command_twice_gives_identical_numbers(ws, tmp_path):
    """From two empty caches (GGUF-free tiny model): same losses and PPLs, bit for bit."""
    runs = []
    for n in (1, 2):
        env = {**os.environ, "MOPS_HOME": str(tmp_path / f"home{n}")}
        out = run_cli(*_train(ws, "-o", str(tmp_path / f"run{n}")), env=env)
        assert out.returncode == 0, out.stderr[-3000:]
        runs.append(json.loads((tmp_path / f"run{n}" / "results.json").read_text()))
    for method in ("baseline", "mops"):
        assert runs[0][method]["losses"] == runs[1][method]["losses"]
        assert runs[0][method]["final"]["ppl"] == runs[1][method]["final"]["ppl"]
    assert runs[0]["base"]["fingerprint"] == runs[1]["base"]["fingerprint"]
