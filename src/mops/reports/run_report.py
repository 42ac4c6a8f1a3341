"""Reports of one run folder (`mops train`, `mops federate`): `results.json` / `results.md` (per-task PPL of
every method, the paired gain of each method over its reference), gate heatmaps, loss curves, per-round tables,
and the multi-seed `summary.{json,md}`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from mops.evaluation.clients import client_scores, task_shares
from mops.evaluation.results import OVERALL, RunResult
from mops.reports.figures import loss_curves, save_gate_heatmap
from mops.reports.stats import format_mean_std, mean_std, paired_summary, relative_gain
from mops.reports.tables import ROUND_HEADERS, markdown_table, round_rows, traffic_rows
from mops.tuners.registry import METHODS


def pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """(reference, method) for every method of the run whose registered reference also ran, then the further
    comparisons it registers (MoPs vs LoRA) where those ran."""
    known = [m for m in methods if m in METHODS]
    first = [(ref, m) for m in known if (ref := METHODS[m].reference(methods))]
    return first + [(ref, m) for m in known for ref in METHODS[m].also_compared_to if ref in methods
                    and (ref, m) not in first]


def gain_header(reference: str, method: str, methods: Sequence[str]) -> str:
    """Column header of a paired gain: the method's registered label for its first reference."""
    label = METHODS[method].gain_label
    return label if label and METHODS[method].reference(methods) == reference else f"{method} vs {reference}"


def comparison_rows(result: RunResult, methods: Sequence[str]) -> tuple[list[str], list[list[object]]]:
    """Per-task PPL table: frozen input prompts, each method, and each paired gain (method vs its reference)."""
    compared = pairs(methods)
    headers = ["task", "input prompts only", *methods]
    headers += [gain_header(ref, m, methods) for ref, m in compared]
    rows = []
    for task in [*result.tasks, OVERALL]:
        row: list[object] = [task, result.input_prompts_only.task_ppl(task)]
        row += [result.ppl(m, task) for m in methods]
        row += [f"{relative_gain(result.ppl(ref, task), result.ppl(m, task)):+.1f}%" for ref, m in compared]
        rows.append(row)
    return headers, rows


def metric_rows(result: RunResult, methods: Sequence[str], name: str) -> tuple[list[str], list[list[object]]]:
    """Per-task `name` (rougeL / exact_match) of greedy answers: input prompts only, each method, and each
    method's difference to its reference in points (positive: better); empty when not scored."""
    evals = [result.input_prompts_only, *(result.methods[m].final for m in methods)]
    if any(e.generation is None for e in evals):
        return [], []
    compared = pairs(methods)
    headers = ["task", "input prompts only", *methods, *(f"{m} - {ref}" for ref, m in compared)]
    rows = []
    for task in [*result.tasks, OVERALL]:
        values = [e.metric(name, task) for e in evals]
        if all(v is None for v in values):
            continue
        row: list[object] = [task, *("-" if v is None else 100 * v for v in values)]
        for ref, m in compared:
            a, b = result.methods[ref].final.metric(name, task), result.methods[m].final.metric(name, task)
            row.append(f"{100 * (b - a):+.1f}")
        rows.append(row)
    return headers, rows


def method_client_scores(result: RunResult, methods: Sequence[str]) -> dict[str, dict]:
    """`client_scores` of each method's final evaluation (per client where each client has its own gate) on
    the run's client mixes, computed once."""
    return {m: client_scores(result.methods[m].client_evaluations or result.methods[m].final, result.tasks,
                             result.clients or []) for m in methods}


def client_gains(reference: dict, method: dict) -> list[float]:
    """Per client: the paired PPL gain of `method` over `reference` (both `client_scores`) on its task mix."""
    return [relative_gain(x, y) for x, y in zip(reference["ppl"], method["ppl"])]


def client_rouge_differences(reference: dict, method: dict) -> list[float] | None:
    """Per client: `method`'s ROUGE-L minus `reference`'s (both `client_scores`) on its task mix, in points
    (None: answers were not scored)."""
    if "rougeL" not in reference or "rougeL" not in method:
        return None
    return [100 * (y - x) for x, y in zip(reference["rougeL"], method["rougeL"])]


def client_rows(result: RunResult, methods: Sequence[str]) -> tuple[list[str], list[list[object]]]:
    """Federated: per client, its largest task and share, each method's PPL on its task mix
    (`evaluation.clients`), each paired gain, and the same for ROUGE-L (x100; differences in points) where
    answers were scored; then mean +- std over clients. Empty without client mixes."""
    if not result.clients:
        return [], []
    compared = pairs(methods)
    scores = method_client_scores(result, methods)
    rouge = [m for m in methods if "rougeL" in scores[m]]
    rouge_pairs = [(ref, m) for ref, m in compared if ref in rouge and m in rouge]
    headers = ["client", "largest task (share)", *methods, *(gain_header(ref, m, methods) for ref, m in compared),
               *(f"ROUGE-L {m}" for m in rouge), *(f"ROUGE-L {m} - {ref}" for ref, m in rouge_pairs)]
    gains = {(ref, m): client_gains(scores[ref], scores[m]) for ref, m in compared}
    diffs = {(ref, m): client_rouge_differences(scores[ref], scores[m]) for ref, m in rouge_pairs}
    rows: list[list[object]] = []
    for c, shares in enumerate(task_shares(result.clients)):
        top = max(range(len(shares)), key=shares.__getitem__)
        row: list[object] = [c, f"{result.tasks[top]} ({100 * shares[top]:.0f}%)", *(scores[m]["ppl"][c] for m in methods)]
        row += [f"{gains[p][c]:+.1f}%" for p in compared]
        row += [100 * scores[m]["rougeL"][c] for m in rouge] + [f"{diffs[p][c]:+.1f}" for p in rouge_pairs]
        rows.append(row)
    rows.append(["mean +- std", "", *(format_mean_std(scores[m]["ppl"]) for m in methods),
                 *(format_mean_std(gains[p], 1, "+") + "%" for p in compared),
                 *(format_mean_std([100 * v for v in scores[m]["rougeL"]], 1) for m in rouge),
                 *(format_mean_std(diffs[p], 1, "+") for p in rouge_pairs)])
    return headers, rows


def write_run_report(run_dir: Path, result: RunResult, methods: Sequence[str]) -> None:
    """results.json (every number, settings, base, versions), results.md, gate heatmaps, loss curves; per-round
    table when the methods ran federated."""
    (run_dir / "results.json").write_text(json.dumps(result.to_dict(), indent=2))
    headers, rows = comparison_rows(result, methods)
    text = "Test perplexity on response tokens (lower is better). Gain = (baseline - MoPs) / baseline.\n\n"
    text += markdown_table(headers, rows)
    for name, title in (("rougeL", "ROUGE-L F1"), ("exact_match", "Exact match (label tasks)")):
        m_headers, m_rows = metric_rows(result, methods, name)
        if m_rows:
            text += f"\n{title} of greedy answers, x100 (higher is better; differences in points).\n\n"
            text += markdown_table(m_headers, m_rows)
    if any(result.methods[m].rounds is not None for m in methods):
        t_headers, t_rows = traffic_rows(result, methods)
        if t_rows:
            text += ("\nCommunication (bytes as serialised by Flower, both directions, mean per round; P^1 is sent "
                     "once per client, its total over the run is apart):\n\n" + markdown_table(t_headers, t_rows))
    c_headers, c_rows = client_rows(result, methods)
    if c_rows:
        text += ("\nPer client: test PPL (and ROUGE-L x100, where answers were scored) on the client's own task mix "
                 "(the per-task test scores weighted by its training partition's task shares):\n\n"
                 + markdown_table(c_headers, c_rows))
    (run_dir / "results.md").write_text(text)
    if result.pretrained_gate is not None:
        save_gate_heatmap(result.pretrained_gate, result.tasks, "gate after pretraining", run_dir / "gate_pretrained.png")
    gated = [m for m in methods if result.methods[m].final.gate is not None]
    for m in gated:  # the first gated method's is gate_final.png
        name = "gate_final.png" if m == gated[0] else f"gate_final_{m}.png"
        save_gate_heatmap(result.methods[m].final.gate, result.tasks, f"gate after {m} training", run_dir / name)
    loss_curves({m: result.methods[m].losses for m in methods}, "training loss", run_dir / "loss.png")
    for m in (gated if result.clients else []):
        name = "gate_clients.png" if m == gated[0] else f"gate_clients_{m}.png"
        routing = method_client_scores(result, [m])[m]["gate"]
        save_gate_heatmap(routing, [f"client {c}" for c in range(len(routing))],
                          f"{m}: gate mass per client (its task mix)", run_dir / name)
    if any(result.methods[m].rounds is not None for m in methods):
        (run_dir / "rounds.md").write_text("Per round (test PPL on the eval subset; bytes as serialised by Flower, "
                                           "sent per payload: P^1 goes to a client once).\n\n"
                                           + markdown_table(ROUND_HEADERS, round_rows(result, methods)))


def seed_summary(per_seed: dict[int, RunResult], methods: Sequence[str]) -> dict:
    """The paired summary of the run's first (reference, method) pair, and under ``"others"`` those of its
    further pairs (e.g. the controls against the baseline), by "<method> vs <reference>"; {} when no pair ran."""
    compared = pairs(methods)
    if not compared:
        return {}
    others = {f"{m} vs {ref}": paired_summary(per_seed, ref, m) for ref, m in compared[1:]}
    return paired_summary(per_seed, *compared[0]) | ({"others": others} if others else {})


def summary_markdown(summary: dict) -> str:
    """Per task: both methods' PPL (mean +- std) and the gain (mean +- std, per seed)."""
    ref, method = summary.get("reference", "baseline"), summary.get("method", "mops")
    headers = ["task", f"{ref} PPL", f"{method} PPL", "gain % (mean +- std)", "gain % per seed"]
    rows = []
    for task, gain in summary["gain_percent"].items():
        b, m = summary["ppl"][ref][task], summary["ppl"][method][task]
        rows.append([task, f"{b['mean']:.2f} +- {b['std']:.2f}", f"{m['mean']:.2f} +- {m['std']:.2f}",
                     f"{gain['mean']:+.2f} +- {gain['std']:.2f}", " ".join(f"{g:+.1f}" for g in gain["per_seed"])])
    head = f"Paired {ref} vs {method} over seeds {summary['seeds']}; gain = ({ref} - {method}) / {ref}.\n\n"
    return head + markdown_table(headers, rows) + "".join("\n" + summary_markdown(other)
                                                          for other in summary.get("others", {}).values())


def bytes_per_round(results: Sequence[RunResult], method: str) -> float:
    """Mean bytes per federated round of `method` (sent + received, every payload) over rounds and seeds."""
    rounds = [r for result in results for r in result.methods[method].rounds or []]
    return sum(r["bytes_sent"] + r["bytes_received"] for r in rounds) / len(rounds) if rounds else 0.0


def federated_summary(per_seed: dict[int, RunResult], methods: Sequence[str], data: str,
                      compress: str | None) -> dict:
    """`mops federate --seeds`: the overall paired gain of MoPs over FedPrompt per seed (percent, positive =
    MoPs better), mean +- std, each method's bytes per round, and the per-task paired summary (each pair with its
    per-client gains under ``clients``); {} without a pair."""
    paired = seed_summary(per_seed, methods)
    if not paired:
        return {}
    overall = paired["gain_percent"][OVERALL]
    out = {"data": data, "compress": compress, "seeds": list(per_seed), "per_seed": overall["per_seed"],
           "gain_mean": overall["mean"], "gain_std": overall["std"],
           "bytes_per_round": {m: bytes_per_round(list(per_seed.values()), m) for m in methods}, "paired": paired}
    if all(r.clients for r in per_seed.values()):
        out["clients"] = clients_summary(per_seed, paired["reference"], paired["method"])
        for other in paired.get("others", {}).values():
            other["clients"] = clients_summary(per_seed, other["reference"], other["method"])
    return out


def clients_summary(per_seed: dict[int, RunResult], ref: str, method: str) -> dict:
    """Per seed: the mean and the spread over clients of `method`'s per-client gain over `ref`; mean +- std over
    seeds; the same for ROUGE-L points (`method` minus `ref`) where answers were scored."""
    scores = [method_client_scores(r, (ref, method)) for r in per_seed.values()]
    per_client = [client_gains(s[ref], s[method]) for s in scores]
    means = [mean_std(g)["mean"] for g in per_client]
    out = {"gain_per_seed": means, **{f"gain_{k}": v for k, v in mean_std(means).items()},
           "spread_per_seed": [mean_std(g)["std"] for g in per_client]}
    rouge = [client_rouge_differences(s[ref], s[method]) for s in scores]
    if all(d is not None for d in rouge):
        points = [mean_std(d)["mean"] for d in rouge]
        out |= {"rougeL_points_per_seed": points, **{f"rougeL_points_{k}": v for k, v in mean_std(points).items()}}
    return out


def clients_sentence(pair: dict) -> str:
    """The per-client line of one pair ({'reference', 'method', 'clients'}) of a federated summary or a
    `mops compare` ('' without client mixes)."""
    c, ref, method = pair.get("clients"), pair["reference"], pair["method"]
    if not c:
        return ""
    text = (f"\nPer client (PPL on its own task mix), {method} vs {ref}, mean gain over clients: "
            f"{c['gain_mean']:+.2f} +- {c['gain_std']:.2f}% over seeds (per seed: "
            f"{' '.join(f'{g:+.2f}' for g in c['gain_per_seed'])}; spread across clients per seed: "
            f"{' '.join(f'{s:.2f}' for s in c['spread_per_seed'])})")
    if "rougeL_points_mean" in c:
        text += (f"; ROUGE-L on its mix, {method} minus {ref}: {c['rougeL_points_mean']:+.2f} +- "
                 f"{c['rougeL_points_std']:.2f} points (per seed: {' '.join(f'{g:+.2f}' for g in c['rougeL_points_per_seed'])})")
    return text + ".\n"


def federated_summary_markdown(summary: dict) -> str:
    """The paired per-task table, the traffic of each method and the per-client line."""
    ref = summary["bytes_per_round"].get(summary["paired"]["reference"])
    traffic = ", ".join(f"{m} {b:,.0f}" + (f" ({b / ref:.2f}x)" if ref else "")
                        for m, b in summary["bytes_per_round"].items())
    return (summary_markdown(summary["paired"])
            + f"\nOverall gain: {summary['gain_mean']:+.2f} +- {summary['gain_std']:.2f}% (per seed: "
            + " ".join(f"{g:+.2f}" for g in summary["per_seed"])
            + f"). Bytes per round (sent + received, every payload with the one-off P^1, mean over rounds and "
            + f"seeds; x {summary['paired']['reference']}): {traffic}.\n"
            + clients_sentence({**summary["paired"], "clients": summary.get("clients")})
            + "".join(clients_sentence(other) for other in summary["paired"].get("others", {}).values()))
