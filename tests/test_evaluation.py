"""Perplexity: exact under batching, equal to the model's own loss."""

from __future__ import annotations

import math

import pytest
import torch

from mops.data import Example, Tokenizer, collate
from mops.evaluation import base_logits_fn, evaluate_perplexity, token_nll
from tests.conftest import ARCHS, tiny_model

EXAMPLES = [
    Example("a", "Name a colour.", "", "Blue, as in the sky."),
    Example("b", "Summarise the text.", "The cat sat on the mat all day long.", "A cat sat."),
    Example("a", "What is two plus two?", "", "Four."),
    Example("b", "Classify the animal.", "whale", "mammal"),
    Example("a", "Write a short line about rain.", "", "Rain taps softly on the old roof."),
]


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_size_does_not_change_perplexity(arch, tiny_tokenizer):
    model = tiny_model(arch)
    enc = Tokenizer(tiny_tokenizer, ["a", "b"], 64).encode_all(EXAMPLES)
    one = evaluate_perplexity(base_logits_fn(model), enc, ["a", "b"], pad_id=0, batch_size=1).to_dict()
    eight = evaluate_perplexity(base_logits_fn(model), enc, ["a", "b"], pad_id=0, batch_size=8).to_dict()
    for task in ("a", "b"):
        assert one["per_task"][task]["tokens"] == eight["per_task"][task]["tokens"] > 0
        assert one["per_task"][task]["ppl"] == pytest.approx(eight["per_task"][task]["ppl"], rel=1e-4)
    assert one["overall"]["ppl"] == pytest.approx(eight["overall"]["ppl"], rel=1e-4)


def test_equals_exp_of_model_loss(tiny_tokenizer):
    model = tiny_model("llama")
    enc = Tokenizer(tiny_tokenizer, ["a", "b"], 64).encode_all(EXAMPLES)
    b = collate(enc, pad_id=0)
    loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
    report = evaluate_perplexity(base_logits_fn(model), enc, ["a", "b"], pad_id=0, batch_size=3)
    assert report.overall.ppl == pytest.approx(math.exp(loss.item()), rel=1e-5)
    assert report.overall.tokens == int((b["labels"][:, 1:] != -100).sum())


def test_token_nll_ignores_unlabelled_positions():
    logits = torch.randn(2, 5, 11)
    labels = torch.full((2, 5), -100)
    labels[0, 3] = 4
    sums, counts = token_nll(logits, labels)
    assert counts.tolist() == [1, 0] and sums[1] == 0
    expected = -torch.log_softmax(logits[0, 2], -1)[4]
    assert sums[0].item() == pytest.approx(expected.item(), rel=1e-6)


def test_client_mix_ppl_and_gate_mass_weight_the_task_scores() -> None:
    from mops.evaluation.clients import client_scores, mix_ppl, task_shares
    from mops.evaluation.results import Evaluation

    ppl = {"per_task": {"a": {"tokens": 100, "examples": 10, "nll": 1.0, "ppl": math.e},
                        "b": {"tokens": 40, "examples": 10, "nll": 3.0, "ppl": math.e ** 3}}}
    ev = Evaluation(step=1, ppl=ppl, gate=[[0.9, 0.1], [0.2, 0.8]])
    # a client with half of each task: 10 response tokens per example of a, 4 of b -> (5 + 6) / 7
    assert mix_ppl(ev, ["a", "b"], [0.5, 0.5]) == pytest.approx(math.exp(11 / 7))
    assert mix_ppl(ev, ["a", "b"], [1.0, 0.0]) == pytest.approx(math.e)
    assert task_shares([[3, 1], [0, 0]]) == [[0.75, 0.25], [0.0, 0.0]]
    scores = client_scores(ev, ["a", "b"], [[3, 1], [0, 2]])
    assert scores["ppl"] == pytest.approx([math.exp((0.75 * 10 + 0.25 * 4 * 3) / (0.75 * 10 + 0.25 * 4)), math.e ** 3])
    assert [pytest.approx(row) for row in ([0.725, 0.275], [0.2, 0.8])] == scores["gate"]
    assert "gate" not in client_scores(Evaluation(step=1, ppl=ppl), ["a", "b"], [[1, 1]])
    assert "rougeL" not in scores
    generation = {"per_task": {"a": {"rougeL": 0.4}, "b": {"rougeL": 0.1}}, "overall": {"rougeL": 0.25}}
    scored = client_scores(Evaluation(step=1, ppl=ppl, generation=generation), ["a", "b"], [[3, 1], [0, 2]])
    assert scored["rougeL"] == pytest.approx([0.75 * 0.4 + 0.25 * 0.1, 0.1])
