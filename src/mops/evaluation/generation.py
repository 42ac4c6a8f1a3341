"""Batched greedy generation of answers, and their task metrics: ROUGE-L (how Super-NaturalInstructions is
officially scored; `rouge-score`) per task, and exact match on the tasks whose answers are labels.

Generation batches prompts of similar length, left-padded, with the KV cache; a MoPs model computes each
input's gate from its own prompt, so a batch generates what one-at-a-time generation would (tested).
"""

from __future__ import annotations

import re
import statistics
import string
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from mops.data.batching import collate, length_sorted_batches
from mops.data.example import Example
from mops.data.tokenization import Encoded
from mops.progress import progress_bar

METRICS = ("ppl", "rougeL", "exact_match")
# (input_ids (B, T) left-padded, attention_mask (B, T), max_new_tokens) -> new tokens (B, N), gate weights (B, E)
# of each input (None without a gate)
# (input_ids (B, T), attention_mask (B, T), max_new_tokens, task_ids (B,)) -> new tokens (B, N), gate weights (B, E)
GenerateFn = Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
LABEL_WORDS, LABEL_VALUES = 3, 20  # a task's answers are labels: each at most 3 words, at most 20 distinct


def greedy_fn(base, mop=None) -> GenerateFn:
    """Greedy decoding with the KV cache: of the base model, or of base + MoPs adapter `mop` (a `MoPModel`)."""
    pad = base.tokenizer.pad_token_id

    def generate(ids: torch.Tensor, mask: torch.Tensor, n: int, task_ids: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if mop is None:
            return base.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                                       pad_token_id=pad)[:, ids.shape[1]:], None
        new = mop.generate(ids, mask, max_new_tokens=n, do_sample=False)
        return new, mop.last_gate_weights if mop.config.use_gate else None

    return generate


def generate_answers(generate: GenerateFn, prompts: Sequence[Encoded], tokenizer, max_new_tokens: int,
                     batch_size: int, device, progress: bool = True) -> tuple[list[str], list[list[float] | None]]:
    """Greedy answers to `prompts` (prompt-only encodings) and each prompt's gate weights, in their order."""
    answers: list[str] = [""] * len(prompts)
    gates: list[list[float] | None] = [None] * len(prompts)
    batches = list(length_sorted_batches([len(p.input_ids) for p in prompts], batch_size))
    with progress_bar(len(batches), "generate", enabled=progress) as advance:
        for batch in batches:
            b = collate([prompts[i] for i in batch], tokenizer.pad_token_id, left_pad=True)
            new, weights = generate(b["input_ids"].to(device), b["attention_mask"].to(device), max_new_tokens,
                                    b["task_ids"].to(device))
            for row, (i, text) in enumerate(zip(batch, tokenizer.batch_decode(new, skip_special_tokens=True))):
                answers[i] = text.strip()
                gates[i] = None if weights is None else weights[row].tolist()
            advance()
    return answers, gates


def normalize(text: str) -> str:
    """Lower case, no punctuation, single spaces (SQuAD-style answer normalisation)."""
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", text).strip()


def label_tasks(examples: Sequence[Example]) -> set[str]:
    """Tasks whose reference answers are labels (short, few distinct values): scored by exact match too."""
    by_task: dict[str, set[str]] = {}
    for ex in examples:
        by_task.setdefault(ex.task, set()).add(normalize(ex.output))
    return {t for t, answers in by_task.items()
            if len(answers) <= LABEL_VALUES and all(len(a.split()) <= LABEL_WORDS for a in answers)}


@dataclass
class TaskMetrics:
    """Per task (and over all examples): mean ROUGE-L F1 and, on label tasks, exact match (fractions)."""

    per_task: dict[str, dict[str, float | None]] = field(default_factory=dict)
    overall: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"per_task": self.per_task, "overall": self.overall}


def score_answers(answers: Sequence[str], examples: Sequence[Example], labels: set[str]) -> TaskMetrics:
    """ROUGE-L F1 of every answer against its reference; exact match (normalised) on the tasks in `labels`."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge: dict[str, list[float]] = {}
    exact: dict[str, list[float]] = {}
    for answer, ex in zip(answers, examples, strict=True):
        rouge.setdefault(ex.task, []).append(scorer.score(ex.output, answer)["rougeL"].fmeasure)
        if ex.task in labels:
            exact.setdefault(ex.task, []).append(float(normalize(answer) == normalize(ex.output)))
    per_task = {t: {"rougeL": statistics.fmean(v), "exact_match": statistics.fmean(exact[t]) if t in exact else None,
                    "examples": len(v)} for t, v in rouge.items()}
    every_exact = [x for v in exact.values() for x in v]
    overall = {"rougeL": statistics.fmean(x for v in rouge.values() for x in v),
               "exact_match": statistics.fmean(every_exact) if every_exact else None, "examples": len(answers)}
    return TaskMetrics(per_task, overall)


def answer_metrics(generate: GenerateFn, prompts: Sequence[Encoded], examples: Sequence[Example],
                   labels: set[str], tokenizer, max_new_tokens: int, batch_size: int, device,
                   progress: bool = True) -> dict:
    """Greedy answers to `prompts` (the prompt-only encodings of `examples`) scored against the references:
    ``{"max_new_tokens", "label_tasks", "per_task", "overall"}`` as results record it. `labels`: `label_tasks`."""
    answers, _ = generate_answers(generate, prompts, tokenizer, max_new_tokens, batch_size, device, progress)
    return {"max_new_tokens": max_new_tokens, "label_tasks": sorted(labels),
            **score_answers(answers, examples, labels).to_dict()}
