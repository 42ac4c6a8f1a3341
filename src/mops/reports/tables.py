"""Result tables: rich for the terminal, Markdown for files."""

from __future__ import annotations

from typing import Sequence

from rich.table import Table

from mops.evaluation.results import RunResult


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; floats with 2 decimals."""

    def cell(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rich_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    table = Table(title=title)
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row))
    return table


def ppl_rows(report: dict) -> list[list[object]]:
    """Rows (task, tokens, NLL, PPL) from `PerplexityReport.to_dict()`, overall last."""
    rows = [[t, s["tokens"], s["nll"], s["ppl"]] for t, s in report["per_task"].items()]
    o = report["overall"]
    return rows + [["overall", o["tokens"], o["nll"], o["ppl"]]]


ROUND_HEADERS = ["method", "round", "round time (s)", "prompts / experts sent", "gate sent", "P^1 sent",
                 "bytes received", "clients (partitions)", "clients accepted", "mean client loss", "test PPL"]
ADAPTER = ("prompts", "experts")  # the payloads of the trained prompts: prompt tuning's, MoPs' experts


def _payload(sizes: dict[str, int], *names: str) -> int:
    return sum(sizes.get(n, 0) for n in names)


def round_rows(result: RunResult, methods: Sequence[str]) -> list[list[object]]:
    """One row per federated round and method: time, bytes per payload, accepted clients, loss, test PPL."""
    rows = []
    for m in methods:
        for r in result.methods[m].rounds or []:
            sent = r.get("bytes_sent_by_payload", {})
            rows.append([m, r["step"], round(r["round_seconds"]), f"{_payload(sent, *ADAPTER):,}",
                         f"{_payload(sent, 'gate'):,}", f"{_payload(sent, 'input_prompts'):,}",
                         f"{r['bytes_received']:,}", " ".join(map(str, r.get("client_partitions", []))) or "-",
                         f"{r['clients_accepted']}/{r['clients_sampled']}",
                         r["client_loss"], r["eval_ppl"]])
    return rows


def traffic_rows(result: RunResult, methods: Sequence[str]) -> tuple[list[str], list[list[object]]]:
    """Communication per method: mean bytes per round by payload (both directions), P^1 over the run, and the
    ratio to the first method's per-round traffic (P^1 excluded: it travels once per client)."""
    headers = ["method", "prompts / experts per round", "gate per round", "P^1 (whole run)",
               "bytes per round (both ways, no P^1)", f"x {methods[0]}"]
    rows, reference = [], None
    for m in methods:
        rounds = [r for r in result.methods[m].rounds or [] if "bytes_sent_by_payload" in r]
        if not rounds:
            continue
        both = [{k: r["bytes_sent_by_payload"].get(k, 0) + r["bytes_received_by_payload"].get(k, 0)
                 for k in (*ADAPTER, "gate")} for r in rounds]
        adapter = sum(_payload(b, *ADAPTER) for b in both) / len(rounds)
        gate = sum(b["gate"] for b in both) / len(rounds)
        frozen = sum(_payload(r["bytes_sent_by_payload"], "input_prompts") for r in rounds)
        reference = reference or adapter + gate
        rows.append([m, f"{adapter:,.0f}", f"{gate:,.0f}", f"{frozen:,}", f"{adapter + gate:,.0f}",
                     f"{(adapter + gate) / reference:.2f}"])
    return headers, rows
