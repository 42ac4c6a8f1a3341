"""The statistics every report shows, computed here only: paired relative gains and mean +- std over seeds.

A paired comparison holds the frozen parts, the data order and the steps equal per seed; the gain of a method
over its reference is (reference - method) / reference on test PPL, one value per seed.
"""

from __future__ import annotations

import statistics
from typing import Sequence

from mops.evaluation.results import OVERALL, RunResult


def relative_gain(reference: float, value: float) -> float:
    """Percent perplexity reduction of `value` against `reference` (positive: lower PPL, better)."""
    return 100.0 * (reference - value) / reference


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def format_mean_std(values: Sequence[float], digits: int = 2, sign: str = "", always_std: bool = False) -> str:
    """"mean +- std" over seeds; a single value alone unless `always_std` (it has no spread); "" for none."""
    if not values:
        return ""
    s = mean_std(values)
    spread = len(values) > 1 or always_std
    return f"{s['mean']:{sign}.{digits}f}" + (f" +- {s['std']:.{digits}f}" if spread else "")


def paired_gains(runs: Sequence[RunResult], reference: str, method: str, task: str = OVERALL) -> list[float]:
    """Per seed: the gain of `method` over `reference` on `task`."""
    return [relative_gain(r.ppl(reference, task), r.ppl(method, task)) for r in runs]


def paired_summary(per_seed: dict[int, RunResult], reference: str, method: str) -> dict:
    """Gains per seed and their mean +- std, and each method's PPL mean +- std, per task and overall."""
    runs = list(per_seed.values())
    tasks = [*runs[0].tasks, OVERALL]
    return {
        "seeds": list(per_seed), "reference": reference, "method": method,
        "gain_percent": {t: {"per_seed": (g := paired_gains(runs, reference, method, t)), **mean_std(g)} for t in tasks},
        "ppl": {m: {t: mean_std([r.ppl(m, t) for r in runs]) for t in tasks} for m in (reference, method)},
    }
