"""`mops reproduce`: grid files, built-in grids, cached cells, reports and figures (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mops.errors import ConfigError, ModelLoadError
from mops.models.loading import fast_dtype
from mops.reproduce.experiments import EXPERIMENTS, builtin_grid
from mops.reproduce.grid import Cell, load_grid
from mops.training.config import TrainConfig
from tests.conftest import save_tiny_model
from tests.test_cli import run_cli

TRAIN = ("{ steps = 3, batch_size = 2, recovery_steps = 2, gate_pretrain_steps = 10, gate_pretrain_examples = 14, "
         "eval_limit_per_task = 2, checkpoint_every = 0, eval_every = 2 }")


def grid_toml(model_dir, experiment: str, cells: str, methods: str = '["baseline", "mops"]') -> str:
    return f"""
experiment = "{experiment}"
title = "tiny {experiment}"
[base]
model = "{model_dir}"
data = "dolly"
total = 70
max_length = 48
seeds = [0, 1]
methods = {methods}
train = {TRAIN}
mop = {{ num_experts = 7, prompts_per_expert = 7, injection_layer = 2 }}
{cells}
"""


def test_grid_files_are_validated(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('experiment = "table"\n[[cells]]\nname = "a"\nmop = { gate_strenght = 1 }\n')
    with pytest.raises(ConfigError, match="mop: .*gate_strenght"):
        load_grid(bad)
    bad.write_text('experiment = "table"\n[[cells]]\nname = "a"\ncolour = "red"\n')
    with pytest.raises(ConfigError, match=r"bad.toml: cells\[0\]: unknown key.*colour"):
        load_grid(bad)
    bad.write_text('experiment = "table"\n[[cells]]\nname = "a"\nmodel = { model = "x", compress = "int8" }\n')
    with pytest.raises(ConfigError, match=r"cells\[0\]: model must be a value, not a table"):
        load_grid(bad)
    bad.write_text('experiment = "table"\n[[cells]\n')
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_grid(bad)
    yml = tmp_path / "g.yaml"
    yml.write_text("experiment: layers\ncells:\n  - name: a\n    mop: {injection_layer: 3}\n  - name: b\n")
    grid = load_grid(yml)
    assert [c.name for c in grid.cells] == ["a", "b"] and grid.cells[0].mop == {"injection_layer": 3}
    assert grid.cells[0].key != grid.cells[1].key
    with pytest.raises(ConfigError, match="missing.toml does not exist"):
        load_grid(tmp_path / "missing.toml")


def test_builtin_grids_cover_the_paper():
    table2 = builtin_grid("table2")
    assert len(table2.cells) == 14 and {c.data.data for c in table2.cells} == {"dolly", "sni"}
    assert {c.model.compress for c in table2.cells} >= {"sparsegpt:0.9", "sparsegpt:2:4", "sparsegpt:7:8"}
    table4 = builtin_grid("table4", "full", model="gemma3-270m", seeds=[5])
    assert [c.model.compress for c in table4.cells] == [None, "sparsegpt:0.5", "sparsegpt:2:4", "sparsegpt:0.75",
                                                        "sparsegpt:0.85", "sparsegpt:0.9"]
    # the paper's Table 9 layers (10 / 3 / 3 / 1 of 32) scaled to the depth: SmolLM2 30 layers, Gemma 3 18
    assert [c.mop.get("injection_layer") for c in builtin_grid("table4").cells] == [None, None, 3, 3, 3, 1]
    assert [c.mop.get("injection_layer") for c in table4.cells] == [None, None, 2, 2, 2, 1]
    assert all(c.train["match_parameters"] and "rougeL" in c.train["eval_metrics"] for c in table4.cells)
    assert all(c.mop == {"injection_layer": 1, "prompts_per_expert": 119} for c in builtin_grid("table6").cells)
    budget = builtin_grid("budget")
    assert [(c.data.data, c.model.compress) for c in budget.cells] == [
        ("dolly", "sparsegpt:0.5"), ("dolly", "sparsegpt:2:4"), ("sni", "sparsegpt:0.5"), ("sni", "sparsegpt:2:4")]
    assert all(c.train["steps"] == 160 and c.train["eval_at"] == "10,20,40,80" and c.methods == ["baseline", "mops"]
               for c in budget.cells)
    assert all(c.methods == ["baseline", "mops", "lora", "ia3"] and c.model.model == "gemma3-270m" and c.seeds == [5]
               for c in table4.cells)
    assert table4.cells[0].train["steps"] > builtin_grid("table4").cells[0].train["steps"]
    assert builtin_grid("table4").cells[0].model.dtype == fast_dtype() and table4.cells[0].model.dtype == "auto"
    assert [c.mop["injection_layer"] for c in builtin_grid("fig3").cells] == [3, 10, 20]
    assert [c.mop["injection_layer"] for c in builtin_grid("fig3", model="gemma3-270m").cells] == [2, 6, 12]
    assert [c.mop["injection_layer"] for c in builtin_grid("fig3", "full", model="gemma3-270m").cells] == \
        [1, 2, 3, 6, 9, 12, 15]
    gating = builtin_grid("gating").cells[0]
    assert gating.train["eval_every"] == 10
    assert set(EXPERIMENTS) == {"table2", "table3", "table4", "table5", "table6", "table8", "fig3", "fig4", "gating",
                                "budget"}
    assert builtin_grid("table8").cells[0].methods == ["lora", "mops", "lora_mops"]
    with pytest.raises(ConfigError, match="unknown experiment"):
        builtin_grid("table9")


def test_grid_runs_caches_cells_and_writes_reports(tmp_path, tiny_model_dir):
    grid = tmp_path / "peft.toml"
    grid.write_text(grid_toml(tiny_model_dir, "table", '[[cells]]\nname = "layer 1"\nmop = { injection_layer = 1 }\n'
                                                     '[[cells]]\nname = "layer 2"\n',
                              methods='["baseline", "mops", "lora"]'))
    out = tmp_path / "out"
    first = run_cli("reproduce", "grid", "--grid", str(grid), "-o", str(out), "--only", "layer 1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert [c["name"] for c in json.loads((out / "results.json").read_text())["cells"]] == ["layer 1"]
    run = run_cli("reproduce", "grid", "--grid", str(grid), "-o", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [c["name"] for c in results["cells"]] == ["layer 1", "layer 2"]
    assert results["cells"][0]["command"].endswith("--only 'layer 1'") and "--only" not in results["cells"][1]["command"]
    assert results["versions"]["torch"] and results["versions"]["peft"]
    cell = results["cells"][0]
    assert cell["resolved"]["mop"]["injection_layer"] == 1 and set(cell["per_seed"]) == {"0", "1"}
    seed0 = cell["per_seed"]["0"]
    gain = 100 * (seed0["baseline"]["ppl"] - seed0["mops"]["ppl"]) / seed0["baseline"]["ppl"]
    text = (out / "results.md").read_text()
    assert ("| setting | L_int, prompts per expert | seeds | baseline | mops | lora | mops vs baseline: gain % (mean "
            "+- std) | per seed | mops vs lora: gain % (mean +- std) | per seed |") in text
    assert "| layer 1 | 1, 7 | 2 |" in text  # the cells' MoPs settings differ: each row shows its own
    assert f"{gain:+.1f}" in text and "Trainable parameters: baseline" in text and "lora" in text
    assert (out / "table.png").stat().st_size > 5000 and "![tiny table](table.png)" in text
    assert (out / "gate_layer_1.png").stat().st_size > 5000 and "![gate layer 2](gate_layer_2.png)" in text
    assert len(seed0["mops"]["gate"]) == 7 and seed0["lora"]["trainable_parameters"] > 0
    # a re-run reads every finished cell back; --only picks the cells to run, the report keeps the finished rest
    again = run_cli("reproduce", "grid", "--grid", str(grid), "-o", str(out), "--only", "layer 2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "recovery" not in again.stderr and json.loads((out / "results.json").read_text())["cells"] == \
        results["cells"] and "| layer 1 | 1, 7 | 2 |" in (out / "results.md").read_text()
    bad = run_cli("reproduce", "grid", "--grid", str(grid), "-o", str(out), "--only", "layer 9")
    assert bad.returncode == 2 and "no cell named ['layer 9']" in bad.stderr
    listed = run_cli("reproduce", "table4", "--full", "--list", "--seeds", "4")
    assert listed.returncode == 0 and listed.stderr.count("seeds [4]") == 6
    assert builtin_grid("table4", "full", seeds=[4]).cells[0].key in listed.stderr
    both = run_cli("reproduce", "table4", "--full", "--quick", "--list")
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_sweep_and_gating_reports_write_figures(tmp_path, tiny_model_dir):
    grid = tmp_path / "layers.toml"
    grid.write_text(grid_toml(tiny_model_dir, "layers", '[[cells]]\nname = "a"\nmop = { injection_layer = 1 }\n'
                                                      '[[cells]]\nname = "b"\nmop = { injection_layer = 3 }\n'))
    out = tmp_path / "layers"
    assert run_cli("reproduce", "grid", "--grid", str(grid), "-o", str(out), "--seeds", "0").returncode == 0
    assert (out / "layers.png").stat().st_size > 5000 and "![tiny layers](layers.png)" in (out / "results.md").read_text()
    gating = tmp_path / "gating.toml"
    gating.write_text(grid_toml(tiny_model_dir, "gating", '[[cells]]\nname = "g"\n'))
    out = tmp_path / "gating"
    run = run_cli("reproduce", "grid", "--grid", str(gating), "-o", str(out), "--seeds", "0")
    assert run.returncode == 0, run.stderr[-3000:]
    names = sorted(p.name for p in out.glob("gate_*.png"))
    assert names == ["gate_seed0_final.png", "gate_seed0_pretrained.png", "gate_seed0_step2.png"]


def test_federated_grids_are_validated():
    table3 = builtin_grid("table3")
    assert len(table3.cells) == 14 and all(c.methods == ["fedprompt", "mops"] for c in table3.cells)
    assert all(c.federated["num_clients"] == 10 and c.federated["rounds"] >= 1 for c in table3.cells)
    full = builtin_grid("table3", "full").cells[0].federated
    assert (full["num_clients"], full["clients_per_round"], full["local_steps"]) == (100, 10, 250)  # the paper's
    table5 = builtin_grid("table5", "full")
    assert [c.federated["num_clients"] for c in table5.cells] == [10] * 4
    assert {c.model.compress for c in table5.cells} == {"int8", "sparsegpt:0.75+int8", "sparsegpt:0.85+int8",
                                                  "sparsegpt:0.9+int8"}
    cfg = table3.cells[0].federated_run("mops", 2, Path("x"))
    assert cfg.seed == 2 and cfg.data.data == "dolly" and cfg.model.compress == "sparsegpt:0.9" and cfg.method == "mops"
    # federated and centralised cells of one size train alike (P^1 recovery at the same rate), clients at batch 4
    central = builtin_grid("table2").cells[0]
    assert cfg.train == TrainConfig(**{**central.train, "batch_size": 4})
    assert cfg.train.recovery_lr == central.train["recovery_lr"] == 1e-2
    with pytest.raises(ConfigError, match="federated: .*num_clientz"):
        Cell(name="a", methods=["mops"], federated={"num_clientz": 3})
    with pytest.raises(ConfigError, match="federated methods are mops, fedprompt, mops_frozen_gate, mops_personal_gate, got \\['lora'\\]"):
        Cell(name="a", methods=["lora"], federated={})
    with pytest.raises(ConfigError, match="train: .*TrainConfig.steps must be >= 0"):
        Cell(name="a", methods=["mops"], federated={}, train={"steps": -3})
    with pytest.raises(ConfigError, match="cell 'a': federated: clients_per_round \\(5\\) > num_clients \\(3\\)"):
        Cell(name="a", methods=["mops"], federated={"num_clients": 3, "clients_per_round": 5})
    # a federated cell's key differs from the centralised cell of the same settings; centralised keys are stable
    assert Cell(name="a", federated={}, methods=["mops"]).key != Cell(name="a", methods=["mops"]).key


def test_federated_grid_runs_on_flower_and_reads_back(tmp_path, tiny_model_dir):
    grid = tmp_path / "fed.yaml"
    grid.write_text(f"""
experiment: table
title: tiny federated
base:
  model: "{tiny_model_dir}"
  total: 70
  max_length: 48
  seeds: [0]
  methods: [fedprompt, mops]
  federated: {{num_clients: 3, clients_per_round: 2, rounds: 2, local_steps: 2}}
  mop: {{prompts_per_expert: 1, injection_layer: 2}}
  train: {{batch_size: 2, recovery_steps: 2, gate_pretrain_steps: 10, gate_pretrain_examples: 14,
          eval_limit_per_task: 2}}
cells:
  - name: fed
""")
    out = tmp_path / "out"
    run = run_cli("reproduce", "grid", "--grid", str(grid), "-o", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["versions"]["flwr"]
    seed0 = results["cells"][0]["per_seed"]["0"]
    fed, mops = seed0["fedprompt"], seed0["mops"]
    assert 0 < fed["trainable_parameters"] < mops["trainable_parameters"]  # MoPs also trains the gate
    assert [e["step"] for e in mops["gate_during"]] == [1, 2] and len(mops["gate"]) == 7
    gain = 100 * (fed["ppl"] - mops["ppl"]) / fed["ppl"]
    text = (out / "results.md").read_text()
    assert "| setting | seeds | fedprompt | mops | mops vs fedprompt: gain % (mean +- std) | per seed |" in text
    assert f"{gain:+.1f}" in text
    cell_dir = out / "cells" / results["cells"][0]["key"]
    assert (cell_dir / "seed-0" / "mops" / "rounds" / "round-2" / "round.json").is_file()
    stamps = {m: (cell_dir / "seed-0" / m / "results.json").stat().st_mtime_ns for m in ("fedprompt", "mops")}
    (cell_dir / "cell.json").unlink()  # the runs themselves are read back, not run again
    again = run_cli("reproduce", "grid", "--grid", str(grid), "-o", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert {m: (cell_dir / "seed-0" / m / "results.json").stat().st_mtime_ns for m in stamps} == stamps
    assert json.loads((out / "results.json").read_text())["cells"] == results["cells"]


def test_second_family_runs_every_centralised_method(tmp_path, tiny_tokenizer):
    """Gemma 3 (sliding-window + full attention layers) through the grid runner: prompt tuning, MoPs, LoRA, IA3
    and MoPs on the frozen LoRA model, paired on one seed."""
    model_dir = save_tiny_model(tmp_path / "tiny-gemma3", tiny_tokenizer, "gemma3")
    grid = tmp_path / "gemma.toml"
    grid.write_text(grid_toml(model_dir, "table", '[[cells]]\nname = "gemma"\n',
                              methods='["baseline", "mops", "lora", "ia3", "lora_mops"]'))
    out = tmp_path / "out"
    run = run_cli("reproduce", "grid", "--grid", str(grid), "-o", str(out), "--seeds", "0")
    assert run.returncode == 0, run.stderr[-3000:]
    seed0 = json.loads((out / "results.json").read_text())["cells"][0]["per_seed"]["0"]
    ppl = {m: seed0[m]["ppl"] for m in ("baseline", "mops", "lora", "ia3", "lora_mops")}
    assert all(1 < v < 1e6 for v in ppl.values()) and len(set(ppl.values())) == 5, ppl
    assert seed0["lora_mops"]["trainable_parameters"] == seed0["mops"]["trainable_parameters"]
    assert "lora_mops vs lora: gain % (mean +- std)" in (out / "results.md").read_text()


def test_layer_sweep_follows_the_depth_of_any_model(tiny_model_dir, tmp_path):
    """A model folder's depth comes from its config (4 layers here): the sweep stays inside the model."""
    assert [c.mop["injection_layer"] for c in builtin_grid("fig3", model=str(tiny_model_dir)).cells] == [1, 3]
    with pytest.raises(ModelLoadError, match="cannot read the config of model"):
        builtin_grid("fig3", model=str(tmp_path / "nowhere"))


def test_budget_curve_points_equal_runs_of_that_length(tmp_path, tiny_model_dir):
    """The budget grid evaluates one long run after each budget: with a constant learning rate and batches that
    depend on (seed, step) only, the point after t steps equals a t-step run (for MoPs too, which trains after
    the baseline: each method starts from the same state, not where the one before it ended)."""
    grid = tmp_path / "budget.toml"
    train = TRAIN.replace("steps = 3,", "steps = 4,").replace("eval_every = 2", "eval_every = 0, eval_at = \"2\"")
    grid.write_text(grid_toml(tiny_model_dir, "budget", '[[cells]]\nname = "long"\n').replace(TRAIN, train))
    out = tmp_path / "budget"
    run = run_cli("reproduce", "grid", "--grid", str(grid), "-o", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [(row["cell"], row["steps"]) for row in summary] == [("long", 2), ("long", 4)]
    cell = json.loads((out / "results.json").read_text())["cells"][0]
    for row in summary:
        per_seed = [100 * (1 - {p["step"]: p["ppl"] for p in s["mops"]["curve"]}[row["steps"]]
                           / {p["step"]: p["ppl"] for p in s["baseline"]["curve"]}[row["steps"]])
                    for s in cell["per_seed"].values()]
        assert row["per_seed"] == pytest.approx(per_seed) and row["seeds"] == [0, 1]
        assert row["gain_mean"] == pytest.approx(sum(per_seed) / 2) and row["data"] == "dolly"
        assert row["compress"] == "none" and row["gain_std"] > 0 and row["dtype"] == "auto"
    assert (out / "budget.png").stat().st_size > 5000 and "| long | auto | 2 |" in (out / "results.md").read_text()
    short = tmp_path / "short.toml"
    short.write_text(grid_toml(tiny_model_dir, "budget", '[[cells]]\nname = "short"\n')
                     .replace(TRAIN, train.replace("steps = 4,", "steps = 2,").replace('eval_at = "2"', 'eval_at = ""')))
    run = run_cli("reproduce", "grid", "--grid", str(short), "-o", str(tmp_path / "short"))
    assert run.returncode == 0, run.stderr[-3000:]
    two = json.loads((tmp_path / "short" / "results.json").read_text())["cells"][0]["per_seed"]
    for seed, entry in two.items():
        for method in ("baseline", "mops"):
            assert entry[method]["curve"] == [{"step": 2, "ppl": entry[method]["ppl"]}]
            assert cell["per_seed"][seed][method]["curve"][0]["ppl"] == pytest.approx(entry[method]["ppl"], rel=1e-6)


def test_table_report_shows_matched_counts_and_paired_rouge():
    """Table 4 as the paper ran it: per-row MoPs settings, matched adapter counts, MoPs vs LoRA, ROUGE-L deltas."""
    from mops.reports.grid_report import comparison_table

    def seed(b, m, lora, rb, rm, rl):
        return {"baseline": {"ppl": b, "rougeL": rb, "trainable_parameters": 40_320},
                "mops": {"ppl": m, "rougeL": rm, "trainable_parameters": 431_751},
                "lora": {"ppl": lora, "rougeL": rl, "trainable_parameters": 403_200,
                         "adapter": {"r": 7, "targets": ["q_proj", "v_proj"], "matched_to": 431_751}}}

    def record(name, layer, seeds):
        return {"name": name, "settings": {"methods": ["baseline", "mops", "lora"]},
                "resolved": {"mop": {"injection_layer": layer, "prompts_per_expert": 70}},
                "per_seed": {str(i): s for i, s in enumerate(seeds)}}

    text = comparison_table([record("50%", 10, [seed(20.0, 19.0, 18.0, 0.20, 0.22, 0.25), seed(22.0, 22.0, 20.0, 0.21, 0.20, 0.24)]),
                             record("90%", 1, [seed(100.0, 90.0, 95.0, 0.10, 0.12, 0.11), seed(110.0, 99.0, 99.0, 0.1, 0.1, 0.1)])])
    assert "| 50% | 10, 70 | 2 |" in text and "| 90% | 1, 70 | 2 |" in text
    assert "mops vs lora: gain % (mean +- std)" in text
    # 50%: MoPs vs baseline (20 -> 19: +5%, 22 -> 22: 0), then MoPs vs LoRA (18 -> 19: -5.6%, 20 -> 22: -10%)
    assert "| +2.50 +- 3.54 | +5.0 +0.0 | -7.78 +- 3.14 | -5.6 -10.0 |" in text
    assert "lora 403,200 (r=7 on q_proj,v_proj; matched to 431,751: -6.6%)" in text
    assert "| mops - baseline (points) | per seed | mops - lora (points) | per seed |" in text
    assert "| +0.50 +- 2.12 | +2.0 -1.0 | -3.50 +- 0.71 | -3.0 -4.0 |" in text  # 50%: ROUGE-L 20 -> 22, 21 -> 20
