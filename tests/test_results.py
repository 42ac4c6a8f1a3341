"""Typed results read every committed run folder back unchanged, and the grid's cell keys stay stable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mops.evaluation.results import RunResult
from mops.reports.run_report import comparison_rows, pairs
from mops.reports.stats import paired_summary, relative_gain
from mops.reproduce.grid import cell_from_dict
from mops.training.stages import METHOD_REVISION

RESULTS = Path(__file__).resolve().parents[1] / "results"
RUN_FILES = sorted(p for p in RESULTS.rglob("results.json") if p.parent.name.startswith("seed-")
                   or (p.parent / "run_config.json").is_file())


@pytest.mark.parametrize("path", RUN_FILES, ids=lambda p: str(p.relative_to(RESULTS)))
def test_committed_run_results_round_trip(path: Path) -> None:
    raw = json.loads(path.read_text())
    result = RunResult.from_dict(raw)
    assert result.methods and result.to_dict() == raw
    for name, method in result.methods.items():
        assert result.ppl(name) == raw[name]["final"]["ppl"]["overall"]["ppl"]


def test_committed_folders_were_found() -> None:
    assert len(RUN_FILES) >= 10


def test_paired_gain_and_table_from_typed_results() -> None:
    raw = json.loads(next(p for p in RUN_FILES if "demo-dolly" in str(p)).read_text())
    result = RunResult.from_dict(raw)
    assert pairs(list(result.methods)) == [("baseline", "mops")]
    headers, rows = comparison_rows(result, ["baseline", "mops"])
    assert headers[-1] == "MoPs gain" and rows[-1][0] == "overall"
    gain = relative_gain(result.ppl("baseline"), result.ppl("mops"))
    assert rows[-1][-1] == f"{gain:+.1f}%"
    summary = paired_summary({0: result, 1: result}, "baseline", "mops")
    assert summary["gain_percent"]["overall"]["per_seed"] == [gain, gain]
    assert summary["gain_percent"]["overall"]["std"] == 0.0


def test_cell_keys_are_those_of_the_committed_grids() -> None:
    """A cell's key is a digest of its settings and the method-stage revision: a committed cell made with the
    current revision keeps its key (a re-run reads it back); one made before the shared-state fix never does."""
    records = [json.loads(p.read_text()) for p in RESULTS.rglob("cell.json")]
    assert {r.get("revision") for r in records} >= {None, METHOD_REVISION}
    for record in records:
        settings = dict(record["settings"])
        for section in ("model", "data"):  # records since the one-schema change nest ModelConfig / DataConfig
            if isinstance(settings.get(section), dict):
                settings |= settings.pop(section)
        flat = {k: v for k, v in settings.items() if v is not None}
        same = cell_from_dict(flat, record["name"]).key == record["key"]
        assert same == (record.get("revision") == METHOD_REVISION), record["name"]
