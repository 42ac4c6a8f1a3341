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


ROUND_HEADERS = ["method", "round", "round time (s)", "bytes sent", "bytes received", "clients accepted",
                 "mean client loss", "test PPL"]


def round_rows(result: RunResult, methods: Sequence[str]) -> list[list[object]]:
    """One row per federated round and method: time, communication, accepted clients, loss, test PPL."""
    return [[m, r["step"], round(r["round_seconds"]), f"{r['bytes_sent']:,}", f"{r['bytes_received']:,}",
             f"{r['clients_accepted']}/{r['clients_sampled']}", r["client_loss"], r["eval_ppl"]]
            for m in methods for r in result.methods[m].rounds or []]
