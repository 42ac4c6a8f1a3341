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
