"""Batched greedy answers and their task metrics (ROUGE-L, exact match on label tasks)."""

from __future__ import annotations

import json

import pytest
import torch

from mops.data import Example, Tokenizer
from mops.evaluation.generation import generate_answers, greedy_fn, label_tasks, normalize, score_answers
from mops.models.loading import BaseModel
from mops.tuners.mops.config import MoPConfig
from mops.tuners.mops.model import MoPModel
from tests.conftest import tiny_model
from tests.test_cli import run_cli


def test_normalize_and_label_tasks():
    assert normalize("  The Answer: YES!\n") == "the answer yes"
    examples = [Example("sentiment", f"review {i}", "", ["Positive", "negative."][i % 2]) for i in range(30)]
    examples += [Example("story", f"tell {i}", "", f"Once upon a time there was river number {i}") for i in range(5)]
    assert label_tasks(examples) == {"sentiment"}


def test_scores_are_rouge_l_and_exact_match_per_task():
    examples = [Example("cls", "q1", "", "positive"), Example("cls", "q2", "", "negative"),
                Example("gen", "q3", "", "the cat sat on the mat")]
    metrics = score_answers(["Positive.", "positive", "the cat sat"], examples, {"cls"})
    assert metrics.per_task["cls"]["exact_match"] == 0.5 and metrics.per_task["gen"]["exact_match"] is None
    assert metrics.per_task["cls"]["rougeL"] == 0.5  # "positive" vs "negative": no common token
    assert metrics.per_task["gen"]["rougeL"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # P = 3/3, R = 3/6
    assert metrics.overall["exact_match"] == 0.5 and metrics.overall["examples"] == 3
    assert metrics.overall["rougeL"] == pytest.approx((1.0 + 0.0 + 2 / 3) / 3)


def test_batched_answers_equal_one_at_a_time(tiny_tokenizer):
    """Per-input gates, left padding and the KV cache: a batch generates what each prompt alone does."""
    base = BaseModel(tiny_model("llama"), tiny_tokenizer, "tiny", "memory")
    mop = MoPModel(base, MoPConfig(num_experts=3, prompts_per_expert=2, injection_layer=2, prompt_init="random"))
    with torch.no_grad():
        mop.gate.fc1.weight.normal_(0, 0.5)
        mop.expert_prompts.normal_(0, 0.5)
    tok = Tokenizer(tiny_tokenizer, ["t"], 64)
    texts = ["Name a colour.", "Say something long about rivers and mills and the sea.", "Why?", "Count to ten."]
    prompts = tok.encode_all([Example("t", t, "", "x") for t in texts], prompt_only=True)
    generate = greedy_fn(base, mop)
    batched, gates = generate_answers(generate, prompts, tiny_tokenizer, 6, batch_size=4, device="cpu", progress=False)
    single = [generate_answers(generate, [p], tiny_tokenizer, 6, batch_size=1, device="cpu", progress=False)
              for p in prompts]
    assert batched == [s[0][0] for s in single]  # token-level equality: test_mop_model
    # each answer sits at its prompt's place (batches are sorted by length): every prompt's own gate
    torch.testing.assert_close(torch.tensor(gates), torch.tensor([s[1][0] for s in single]))
    assert len(gates[0]) == 3 and len({tuple(g) for g in gates}) == 4


def test_cli_eval_metrics(tmp_path, tiny_model_dir):
    out = run_cli("eval", "--model", str(tiny_model_dir), "--total", "70", "--max-length", "48",
                  "--limit-per-task", "2", "--metrics", "ppl,rougeL,exact_match", "--max-new-tokens", "4", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    payload = json.loads(out.stdout)
    gen = payload["generation"]
    assert set(gen["per_task"]) == set(payload["per_task"]) and gen["overall"]["examples"] == payload["examples"] == 7
    assert 0.0 <= gen["overall"]["rougeL"] <= 1.0 and gen["max_new_tokens"] == 4
    bad = run_cli("eval", "--model", str(tiny_model_dir), "--metrics", "bleu")
    assert bad.returncode == 2 and "--metrics must be" in bad.stderr


def test_cli_generate_from_a_file_to_a_file(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": 1, "instruction": "Name a colour."}\n\n{"id": 2, "instruction": "Sum", "input": "2 2"}\n')
    out = tmp_path / "out" / "answers.jsonl"
    run = run_cli("generate", "--model", str(tiny_model_dir), "--input", str(prompts), "--output", str(out),
                  "--max-new-tokens", "3", "-b", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [1, 2] and rows[1]["input"] == "2 2"
    assert all(isinstance(r["output"], str) and r["gate"] is None for r in rows)
    one = run_cli("generate", "Sum", "--context", "2 2", "--model", str(tiny_model_dir), "--max-new-tokens", "3",
                  "--json")
    assert json.loads(one.stdout)[0]["output"] == rows[1]["output"]  # batched from a file = alone
    prompts.write_text('{"id": 1, "instruction": "Name a colour."}\n{"id": 2}\n')
    bad = run_cli("generate", "--model", str(tiny_model_dir), "--input", str(prompts), "--output", str(out))
    assert bad.returncode == 2 and "prompts.jsonl:2: missing field 'instruction'" in bad.stderr
    both = run_cli("generate", "hi", "--model", str(tiny_model_dir), "--input", str(prompts))
    assert both.returncode == 2 and "one of them" in both.stderr


def test_train_reports_rouge_beside_ppl(tmp_path, tiny_model_dir):
    from tests.test_cli_train import ARGS

    run = tmp_path / "run"
    out = run_cli("train", "--model", str(tiny_model_dir), *ARGS, "--eval-metrics", "ppl,rougeL,exact_match",
                  "--eval-max-new-tokens", "3", "-o", str(run))
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    for key in ("baseline", "mops"):
        generation = results[key]["final"]["generation"]
        assert generation["max_new_tokens"] == 3 and 0.0 <= generation["overall"]["rougeL"] <= 1.0
        assert len(results[key]["evals"]) == 1 and "generation" in results[key]["evals"][0]  # eval_every 2 of 4
    assert "generation" in results["input_prompts_only"]
    text = (run / "results.md").read_text()
    assert "ROUGE-L F1 of greedy answers" in text and "| task | input prompts only | baseline | mops | mops - baseline |" in text
    bad = run_cli("train", "--model", str(tiny_model_dir), "--eval-metrics", "rougeL", "-o", str(tmp_path / "x"))
    assert bad.returncode == 2 and "TrainConfig.eval_metrics must list ppl" in bad.stderr
