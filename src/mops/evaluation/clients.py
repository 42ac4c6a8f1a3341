"""How a global adapter serves each federated client: test PPL and gate routing on the client's own task mix.

A client's held-out data follows its training partition's task mix (the skew gives each client one large
task). Its expected PPL is computed from the per-task scores of the global test split, weighted by that mix:
per task t with client share w_t, mean NLL per token n_t and mean response tokens per example tau_t,

    client NLL = sum_t w_t tau_t n_t / sum_t w_t tau_t,    client PPL = exp(client NLL)

(the token-weighted NLL of a test sample drawn with the client's mix). It uses every test example, where a
per-client partition of a 10-examples-per-task test split would leave a handful each. The client x expert
gate mass is the task x expert gate matrix weighted by the same shares, and so is ROUGE-L (a per-example
mean: the client's expected ROUGE-L is sum_t w_t rougeL_t) where the evaluation scored answers. A method whose
clients keep their own gate has one evaluation per client: client i is scored from evaluation i.
"""

from __future__ import annotations

import math
from typing import Sequence

from mops.evaluation.results import Evaluation


def task_shares(histogram: Sequence[Sequence[int]]) -> list[list[float]]:
    """(clients x tasks) example counts -> each client's task shares (rows sum to 1)."""
    return [[c / sum(row) for c in row] if sum(row) else [0.0] * len(row) for row in histogram]


def mix_ppl(evaluation: Evaluation, tasks: Sequence[str], shares: Sequence[float]) -> float:
    """Expected test PPL on a sample with task `shares` (see the module docstring)."""
    num = den = 0.0
    for task, w in zip(tasks, shares):
        score = evaluation.ppl["per_task"][task]
        if w == 0 or not score.get("examples"):
            continue
        tau = score["tokens"] / score["examples"]
        num += w * tau * score["nll"]
        den += w * tau
    return math.exp(num / den) if den else math.nan


def client_scores(evaluation: Evaluation | Sequence[Evaluation], tasks: Sequence[str],
                  histogram: Sequence[Sequence[int]]) -> dict:
    """Per client: PPL on its mix, ROUGE-L on its mix where answers were scored and, when the gate was on, its
    gate mass per expert (clients x experts). `evaluation`: the global adapter's, or one per client."""
    shares = task_shares(histogram)
    evals = [evaluation] * len(shares) if isinstance(evaluation, Evaluation) else list(evaluation)
    if len(evals) != len(shares):
        raise ValueError(f"{len(evals)} client evaluations for {len(shares)} clients")
    out: dict = {"ppl": [mix_ppl(ev, tasks, w) for ev, w in zip(evals, shares)]}
    if all(ev.metric("rougeL") is not None for ev in evals):
        out["rougeL"] = [sum(w[t] * ev.metric("rougeL", task) for t, task in enumerate(tasks))
                         for ev, w in zip(evals, shares)]
    if all(ev.gate is not None for ev in evals):
        out["gate"] = [[sum(w[t] * ev.gate[t][e] for t in range(len(tasks))) for e in range(len(ev.gate[0]))]
                       for ev, w in zip(evals, shares)]
    return out
