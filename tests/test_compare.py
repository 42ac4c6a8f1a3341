"""`mops compare`: paired gains across two run folders, and the refusal of pairs that are not paired."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mops.errors import ConfigError
from mops.evaluation.results import Evaluation, MethodResult, RunResult
from mops.reports.compare import compare_markdown, compare_runs, labels
from tests.test_cli import run_cli

TASKS = ["a", "b"]


def _eval(ppl_a: float, ppl_b: float, rouge: float | None = None, examples: int = 4) -> Evaluation:
    per_task = {"a": {"ppl": ppl_a, "nll": math.log(ppl_a), "examples": examples, "tokens": 40},
                "b": {"ppl": ppl_b, "nll": math.log(ppl_b), "examples": 4, "tokens": 30}}
    generation = None if rouge is None else {"overall": {"rougeL": rouge},
                                             "per_task": {t: {"rougeL": rouge} for t in TASKS}}
    return Evaluation(9, {"overall": {"ppl": (ppl_a + ppl_b) / 2}, "per_task": per_task}, generation=generation)


def _federated_seed(seed: int, method: str, final: Evaluation, aggregation: str = "fedavg",
                    sampled: list | None = None, clients: list | None = None) -> RunResult:
    rounds = [{"client_partitions": p, "eval": final.to_dict()} for p in (sampled or [[0, 1], [1, 0]])]
    settings = {"seed": seed, "method": method, "data": {"data": "sni", "total": 50},
                "train": {"seed": seed, "steps": 20, "batch_size": 4, "lr": 0.1},
                "federation": {"num_clients": 2, "clients_per_round": 2, "rounds": 2, "aggregation": aggregation}}
    return RunResult(tasks=TASKS, input_prompts_only=final, settings=settings,
                     base={"fingerprint": "f", "compression_settings": None, "dtype": "bfloat16"},
                     clients=clients or [[3, 1], [1, 3]],
                     methods={method: MethodResult(final=final, rounds=rounds)})


def _write(folder: Path, per_seed: dict[int, RunResult]) -> None:
    for seed, result in per_seed.items():
        (folder / f"seed-{seed}").mkdir(parents=True, exist_ok=True)
        (folder / f"seed-{seed}" / "results.json").write_text(json.dumps(result.to_dict()))


def test_federated_folders_pair_per_seed_with_rouge_and_client_gains(tmp_path):
    ref, new = tmp_path / "fedavg", tmp_path / "expertwise"
    _write(ref, {s: _federated_seed(s, "mops", _eval(10.0, 20.0, 0.30)) for s in (0, 1)})
    _write(new, {0: _federated_seed(0, "mops", _eval(9.0, 18.0, 0.35), "expertwise"),
                 1: _federated_seed(1, "mops", _eval(11.0, 22.0, 0.25), "expertwise")})
    summary = compare_runs(f"{ref}:mops", f"{new}:mops")
    assert summary["paired"]["reference"] == "mops@fedavg" and summary["paired"]["method"] == "mops@expertwise"
    assert summary["paired"]["gain_percent"]["overall"]["per_seed"] == pytest.approx([10.0, -10.0])
    assert summary["paired"]["gain_percent"]["a"]["mean"] == pytest.approx(0.0)
    assert summary["rougeL_points"]["per_seed"] == pytest.approx([5.0, -5.0])
    assert summary["clients"]["gain_per_seed"] == pytest.approx([10.0, -10.0])  # every task moved alike
    assert summary["settings_differ"] == {"federation.aggregation": ["fedavg", "expertwise"]}
    text = compare_markdown(summary)
    assert "+0.00 +- 14.14% (per seed: +10.00 -10.00)" in text and "ROUGE-L" in text and "Per client" in text


@pytest.mark.parametrize("change, what", [
    ({"sampled": [[1, 0], [0, 1]]}, "clients sampled per round"),
    ({"clients": [[4, 0], [0, 4]]}, "client partitions"),
    ({"examples": 5}, "test set"),
])
def test_a_pair_that_is_not_paired_is_refused_naming_the_difference(tmp_path, change, what):
    ref, other = tmp_path / "ref", tmp_path / "other"
    _write(ref, {0: _federated_seed(0, "fedprompt", _eval(10.0, 20.0))})
    examples = change.pop("examples", 4)
    _write(other, {0: _federated_seed(0, "mops", _eval(9.0, 18.0, examples=examples), **change)})
    with pytest.raises(ConfigError, match=f"not a paired comparison: {what}.* in seed 0"):
        compare_runs(f"{ref}:fedprompt", f"{other}:mops")


def test_cli_errors_are_one_line_with_status_2(tmp_path):
    ref = tmp_path / "ref"
    _write(ref, {0: _federated_seed(0, "mops", _eval(10.0, 20.0))})
    _write(tmp_path / "seed1", {1: _federated_seed(1, "mops", _eval(10.0, 20.0))})
    for args, message in (((f"{ref}:mops", str(ref)), "RUN_DIR:METHOD"),
                          ((f"{ref}:mops", f"{tmp_path / 'none'}:mops"), "no results.json"),
                          ((f"{ref}:mops", f"{tmp_path / 'seed1'}:mops"), "no common seed"),
                          ((f"{ref}:fedprompt", f"{ref}:mops"), "no method 'fedprompt' (it ran: mops)")):
        out = run_cli("compare", *args)
        assert out.returncode == 2 and out.stderr.startswith("error:") and message in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_labels_name_the_folder_wherever_the_sides_come_from_two():
    assert labels((Path("a"), "baseline"), (Path("a"), "mops")) == ("baseline", "mops")
    assert labels((Path("r/x"), "baseline"), (Path("r/y"), "mops")) == ("baseline@x", "mops@y")
    assert labels((Path("x"), "mops"), (Path("x"), "mops")) == ("mops@A", "mops@B")
    assert labels((Path("p/x"), "mops"), (Path("q/x"), "mops")) == ("mops@x@A", "mops@x@B")
