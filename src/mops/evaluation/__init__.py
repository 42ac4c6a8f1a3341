"""Evaluation: response-token perplexity."""

from mops.evaluation.perplexity import (
    LogitsFn, PerplexityReport, TaskScore, base_logits_fn, evaluate_perplexity, token_nll,
)

__all__ = ["LogitsFn", "PerplexityReport", "TaskScore", "base_logits_fn", "evaluate_perplexity", "token_nll"]
