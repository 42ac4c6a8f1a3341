"""Evaluation: response-token perplexity."""

from mops.evaluation.perplexity import PerplexityReport, TaskScore, evaluate_perplexity, token_nll
from mops.models.logits import LogitsFn, base_logits_fn

__all__ = ["LogitsFn", "PerplexityReport", "TaskScore", "base_logits_fn", "evaluate_perplexity", "token_nll"]
