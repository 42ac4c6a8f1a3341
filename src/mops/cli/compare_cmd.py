"""`mops compare`: the paired gain of a method in one run folder over a method in another."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mops.cli.common import JsonOpt, console, emit_json, write_json


def compare_command(
    reference: str = typer.Argument(..., help="RUN_DIR:METHOD measured against (e.g. runs/controls-sni:baseline)."),
    method: str = typer.Argument(..., help="RUN_DIR:METHOD whose gain is reported (e.g. runs/wide-sni:baseline)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the comparison here as JSON, and "
                                          "as markdown beside it (.md)."),
    as_json: bool = JsonOpt,
) -> None:
    """Paired comparison across two `mops train` or `mops federate` run folders: refused unless both share the
    base, data, test set, seeds and data order (federated: partitions and sampled clients); per task and seed
    gains, ROUGE-L and per-client gains where both have them, and the settings that differ."""
    from mops.reports.compare import compare_markdown, compare_runs

    summary = compare_runs(reference, method)
    text = compare_markdown(summary)
    if output is not None:
        write_json(output, summary)
        output.with_suffix(".md").write_text(text)
    if as_json:
        emit_json(summary)
    else:
        console.print(text, highlight=False, soft_wrap=True)
