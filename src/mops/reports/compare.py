"""Paired comparison of one method in a run folder with a method in another (`mops compare`).

Some comparisons cannot live in one run: a control with its own slot count and P^1 (490 prompt slots, no
routing), a run-wide federated setting (aggregation, server optimiser, gate size). The comparison is paired only
when both folders trained on the same frozen base, data, test set, seeds and data order (and, federated, the same
client partitions and per-round sampling); this module checks that seed by seed, refuses otherwise, and reports
the gain per task and seed, ROUGE-L where both scored answers, per-client gains where both are federated, and the
settings that differ (what the comparison is about).

Hand-written: these pairing checks are specific to mops' result files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from mops.errors import ConfigError
from mops.evaluation.results import OVERALL, RunResult
from mops.reports.run_report import clients_sentence, clients_summary, summary_markdown
from mops.paths import RUN_CONFIG
from mops.reports.stats import mean_std, paired_summary
from mops.settings import flat

TRAIN_ORDER = ("seed", "steps", "batch_size", "grad_accum", "group_by_length")  # what fixes the data order
DATA_FIELDS = ("data", "tasks", "total", "max_length", "template")
FEDERATION_SAMPLING = ("num_clients", "clients_per_round", "rounds", "local_steps", "partition", "skew_factor",
                       "dirichlet_alpha")  # what fixes the partitions and each round's clients


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a run folder, one of its methods, and its label in the tables."""

    run_dir: Path
    method: str
    label: str


def parse_side(text: str) -> tuple[Path, str]:
    """'RUN_DIR:METHOD' -> (folder, method)."""
    folder, sep, method = text.rpartition(":")
    if not sep or not folder or not method:
        raise ConfigError(f"{text!r}: name a run folder and one of its methods as RUN_DIR:METHOD "
                          "(e.g. runs/controls-sni:baseline)")
    return Path(folder), method


def load_seeds(run_dir: Path) -> dict[int, RunResult]:
    """Per seed, the RunResult of a run folder (`seed-N/results.json`, or `results.json` for one seed)."""
    files = sorted(run_dir.glob("seed-*/results.json")) or sorted(run_dir.glob("results.json"))
    if not files:
        raise ConfigError(f"{run_dir}: no results.json or seed-N/results.json (not a finished mops train / "
                          "federate run folder)")
    out: dict[int, RunResult] = {}
    for path in files:
        try:
            result = RunResult.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConfigError(f"{path}: not a mops results file ({type(err).__name__}: {err})") from None
        out[int(result.settings.get("seed", result.settings.get("train", {}).get("seed", 0)))] = result
    return out


def _data_settings(run_dir: Path, result: RunResult) -> dict:
    """The data selection a seed trained on: recorded per seed (federated) or beside the seeds (train)."""
    if "data" in result.settings:
        return result.settings["data"]
    path = run_dir / RUN_CONFIG
    return {k: v for k, v in json.loads(path.read_text()).items() if k in DATA_FIELDS} if path.is_file() else {}


def _test_set(result: RunResult, method: str) -> dict[str, tuple[int, int]]:
    """Per task: (examples, tokens) of the method's final scoring: equal counts = the same test examples."""
    return {t: (v["examples"], v["tokens"]) for t, v in result.methods[method].final.ppl["per_task"].items()}


def _sampling(result: RunResult, method: str) -> list | None:
    """Federated: the client partitions sampled in each round (None: not federated)."""
    rounds = result.methods[method].rounds
    return None if rounds is None else [r.get("client_partitions") for r in rounds]


def pairing_checks(a: Side, ra: RunResult, b: Side, rb: RunResult) -> list[tuple[str, Callable[[Side, RunResult], Any]]]:
    """(what, value of one side) for everything two sides must share to be a paired comparison."""
    checks: list[tuple[str, Callable[[Side, RunResult], Any]]] = [
        ("tasks", lambda s, r: r.tasks),
        ("base model weights (fingerprint)", lambda s, r: (r.base or {}).get("fingerprint")),
        ("compression", lambda s, r: (r.base or {}).get("compression_settings")),
        ("dtype", lambda s, r: (r.base or {}).get("dtype")),
        ("data selection", lambda s, r: _data_settings(s.run_dir, r)),
        ("test set (examples and tokens per task)", lambda s, r: _test_set(r, s.method)),
        *((f"train.{k}", lambda s, r, k=k: r.settings.get("train", {}).get(k)) for k in TRAIN_ORDER),
    ]
    if ra.clients is not None or rb.clients is not None:
        checks += [*((f"federation.{k}", lambda s, r, k=k: r.settings.get("federation", {}).get(k))
                     for k in FEDERATION_SAMPLING),
                   ("client partitions", lambda s, r: r.clients),
                   ("clients sampled per round", lambda s, r: _sampling(r, s.method))]
    return checks


def check_paired(a: Side, runs_a: dict[int, RunResult], b: Side, runs_b: dict[int, RunResult]) -> list[int]:
    """The seeds both sides ran, after checking each is a paired comparison; ConfigError naming the first
    difference otherwise."""
    seeds = [s for s in runs_a if s in runs_b]
    if not seeds:
        raise ConfigError(f"no common seed: {a.run_dir} ran {sorted(runs_a)}, {b.run_dir} ran {sorted(runs_b)}")
    for side, runs in ((a, runs_a), (b, runs_b)):
        ran = runs[seeds[0]].methods
        if side.method not in ran:
            raise ConfigError(f"{side.run_dir}: no method {side.method!r} (it ran: {', '.join(ran)})")
    for seed in seeds:
        ra, rb = runs_a[seed], runs_b[seed]
        for what, value in pairing_checks(a, ra, b, rb):
            va, vb = value(a, ra), value(b, rb)
            if va != vb:
                raise ConfigError(f"not a paired comparison: {what} differs in seed {seed} ({a.run_dir}: "
                                  f"{_short(va)}; {b.run_dir}: {_short(vb)}); compare runs of the same base, data, "
                                  "test set, seeds and data order")
    return seeds


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def setting_differences(ra: RunResult, rb: RunResult) -> dict[str, list]:
    """Settings (dotted names) whose values differ between two runs, as [a, b]: what the comparison is about."""
    skip = ("output", "method")  # where each run wrote, and which method a federated seed ran last
    fa, fb = (flat({k: v for k, v in r.settings.items() if k not in skip}) for r in (ra, rb))
    return {k: [fa.get(k), fb.get(k)] for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def labels(a: tuple[Path, str], b: tuple[Path, str]) -> tuple[str, str]:
    """Table labels: the method names within one folder; across folders each with its folder's name."""
    if a[0] == b[0]:
        return (a[1], b[1]) if a[1] != b[1] else (f"{a[1]}@A", f"{b[1]}@B")
    la, lb = f"{a[1]}@{a[0].name}", f"{b[1]}@{b[0].name}"
    return (la, lb) if la != lb else (f"{la}@A", f"{lb}@B")


def compare_runs(reference: str, method: str) -> dict:
    """`mops compare`: the paired gain of `method` ('RUN_DIR:METHOD') over `reference` per task and seed, with
    ROUGE-L (points) and per-client gains where both sides have them, and the settings that differ."""
    pa, pb = parse_side(reference), parse_side(method)
    la, lb = labels(pa, pb)
    a, b = Side(pa[0], pa[1], la), Side(pb[0], pb[1], lb)
    runs_a, runs_b = load_seeds(a.run_dir), load_seeds(b.run_dir)
    seeds = check_paired(a, runs_a, b, runs_b)
    joined = {s: RunResult(**{**runs_a[s].__dict__, "methods": {a.label: runs_a[s].methods[a.method],
                                                                 b.label: runs_b[s].methods[b.method]}})
              for s in seeds}
    out = {"reference": {"run_dir": str(a.run_dir), "method": a.method},
           "method": {"run_dir": str(b.run_dir), "method": b.method},
           "settings_differ": setting_differences(runs_a[seeds[0]], runs_b[seeds[0]]),
           "paired": paired_summary(joined, a.label, b.label)}
    finals = [(r.methods[a.label].final, r.methods[b.label].final) for r in joined.values()]
    if all(x.metric("rougeL") is not None and y.metric("rougeL") is not None for x, y in finals):
        points = [100 * (y.metric("rougeL") - x.metric("rougeL")) for x, y in finals]
        out["rougeL_points"] = {"per_seed": points, **mean_std(points),
                                a.label: mean_std([100 * x.metric("rougeL") for x, _ in finals]),
                                b.label: mean_std([100 * y.metric("rougeL") for _, y in finals])}
    if all(r.clients for r in joined.values()):
        out["clients"] = clients_summary(joined, a.label, b.label)
    return out


def compare_markdown(summary: dict) -> str:
    """The per-task paired table, the overall line with ROUGE-L and per-client gains, and what differs."""
    paired, ref, method = summary["paired"], summary["paired"]["reference"], summary["paired"]["method"]
    g = paired["gain_percent"][OVERALL]
    text = summary_markdown(paired) + (f"\nOverall gain of {method} over {ref}: {g['mean']:+.2f} +- {g['std']:.2f}% "
                                       f"(per seed: {' '.join(f'{x:+.2f}' for x in g['per_seed'])}).")
    if (r := summary.get("rougeL_points")) is not None:
        text += (f" ROUGE-L: {ref} {r[ref]['mean']:.1f}, {method} {r[method]['mean']:.1f}; difference "
                 f"{r['mean']:+.2f} +- {r['std']:.2f} points (per seed: {' '.join(f'{x:+.1f}' for x in r['per_seed'])}).")
    text += clients_sentence({"reference": ref, "method": method, "clients": summary.get("clients")})
    differ = summary["settings_differ"]
    text += "\n\nSettings that differ (" + summary["reference"]["run_dir"] + " -> " + summary["method"]["run_dir"] + "): "
    text += ("; ".join(f"{k}: {_short(v[0], 40)} -> {_short(v[1], 40)}" for k, v in differ.items()) or "none") + ".\n"
    return text
