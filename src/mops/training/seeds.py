"""Paired comparisons over seeds: per seed, baseline and MoPs share P^1, data order and steps; the summary is
mean +- std over seeds of MoPs' relative gain (baseline - MoPs) / baseline, overall and per task."""

from __future__ import annotations

import statistics
from typing import Sequence

from mops.reports.tables import markdown_table


def task_ppl(evaluation: dict, task: str) -> float:
    """PPL of one task (or "overall") from an evaluation record {"ppl": {"overall", "per_task"}}."""
    report = evaluation["ppl"]
    return report["overall"]["ppl"] if task == "overall" else report["per_task"][task]["ppl"]


def relative_gain(baseline: float, mops: float) -> float:
    """Percent perplexity reduction of MoPs against the baseline (positive: MoPs is better)."""
    return 100.0 * (baseline - mops) / baseline


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize_seeds(per_seed: dict[int, dict], tasks: Sequence[str]) -> dict:
    """`per_seed`: seed -> `run_methods` results with both methods. Returns gains per seed and their stats."""
    rows: dict[str, list[float]] = {t: [] for t in [*tasks, "overall"]}
    ppl: dict[str, dict[str, list[float]]] = {m: {t: [] for t in rows} for m in ("baseline", "mops")}
    for results in per_seed.values():
        for task in rows:
            pair = []
            for method in ("baseline", "mops"):
                value = task_ppl(results[method]["final"], task)
                ppl[method][task].append(value)
                pair.append(value)
            rows[task].append(relative_gain(*pair))
    return {
        "seeds": list(per_seed),
        "gain_percent": {t: {"per_seed": v, **mean_std(v)} for t, v in rows.items()},
        "ppl": {m: {t: mean_std(v) for t, v in by_task.items()} for m, by_task in ppl.items()},
    }


def summary_markdown(summary: dict) -> str:
    headers = ["task", "baseline PPL", "MoPs PPL", "gain % (mean +- std)", "gain % per seed"]
    rows = []
    for task, gain in summary["gain_percent"].items():
        b, m = summary["ppl"]["baseline"][task], summary["ppl"]["mops"][task]
        rows.append([task, f"{b['mean']:.2f} +- {b['std']:.2f}", f"{m['mean']:.2f} +- {m['std']:.2f}",
                     f"{gain['mean']:+.2f} +- {gain['std']:.2f}", " ".join(f"{g:+.1f}" for g in gain["per_seed"])])
    head = f"Paired baseline vs MoPs over seeds {summary['seeds']}; gain = (baseline - MoPs) / baseline.\n\n"
    return head + markdown_table(headers, rows)
