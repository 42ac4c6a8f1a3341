"""Reports of a grid (`mops reproduce`): `results.md` (tables of mean +- std over seeds, MoPs' paired gain, trainable
parameters) and PNG figures (sweeps, gate heatmaps). Written after every finished cell."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from mops.reports.figures import plt, save_gate_heatmap
from mops.reports.run_report import pairs as method_pairs
from mops.reports.stats import format_mean_std, mean_std, relative_gain
from mops.reports.tables import markdown_table
from mops.tuners.registry import METHODS


def _methods(records: Sequence[dict]) -> list[str]:
    """Every method any cell ran, in first-seen order."""
    return list(dict.fromkeys(m for r in records for m in r["settings"]["methods"]))


def ppl_values(record: dict, method: str) -> list[float]:
    return [seed[method]["ppl"] for seed in record["per_seed"].values()]


def gains(record: dict, reference: str, method: str) -> list[float]:
    """Per seed: (reference - method) / reference in %, paired on the same seed."""
    return [relative_gain(seed[reference]["ppl"], seed[method]["ppl"]) for seed in record["per_seed"].values()]


def comparison_table(records: Sequence[dict]) -> str:
    """Rows = cells; PPL per method (mean +- std over seeds); the paired gain of each method over its registered
    reference (MoPs over prompt tuning or FedPrompt, MoPs on the frozen LoRA model over LoRA) where both ran."""
    methods = _methods(records)
    pairs = method_pairs(methods)
    headers = ["setting", "seeds", *methods]
    for a, b in pairs:
        headers += [f"{b} vs {a}: gain % (mean +- std)", "per seed"]
    rows = []
    for r in records:
        ran = r["settings"]["methods"]
        row: list[object] = [r["name"], len(r["per_seed"])]
        row += [format_mean_std(ppl_values(r, m)) if m in ran else "" for m in methods]
        for a, b in pairs:
            g = gains(r, a, b) if a in ran and b in ran else None
            row += [format_mean_std(g, sign="+"), " ".join(f"{x:+.1f}" for x in g)] if g else ["", ""]
        rows.append(row)
    counts: dict[str, int] = {}  # each method's count, from the first cell that ran it
    for r in records:
        seed = next(iter(r["per_seed"].values()))
        for m in r["settings"]["methods"]:
            if seed[m].get("trainable_parameters"):
                counts.setdefault(m, seed[m]["trainable_parameters"])
    params = ", ".join(f"{m} {counts[m]:,}" for m in methods if m in counts)
    text = markdown_table(headers, rows) + f"\nTrainable parameters: {params}.\n"
    scored = [r for r in records if all("rougeL" in seed.get(m, {}) for seed in r["per_seed"].values()
                                        for m in r["settings"]["methods"])]
    if scored:  # cells evaluated with --eval-metrics rougeL: the same table in ROUGE-L (x100, higher is better)
        rouge_rows = [[r["name"], len(r["per_seed"]), *(format_mean_std([100 * s[m]["rougeL"] for s in r["per_seed"].values()])
                                                         if m in r["settings"]["methods"] else "" for m in methods)]
                      for r in scored]
        text += "\nROUGE-L F1 of greedy answers (x100, mean +- std over seeds):\n\n"
        text += markdown_table(["setting", "seeds", *methods], rouge_rows)
    return text


def sweep_figure(records: Sequence[dict], x_label: str, xs: Sequence[float], title: str, path: Path) -> Path:
    """Mean test PPL (error bars: std over seeds) per method against the swept setting."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for method in records[0]["settings"]["methods"]:
        values = [ppl_values(r, method) for r in records]
        means = [mean_std(v)["mean"] for v in values]
        stds = [mean_std(v)["std"] for v in values]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=method)
    ax.set_xlabel(x_label)
    ax.set_ylabel("test PPL (response tokens)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table_figure(records: Sequence[dict], title: str, path: Path) -> Path:
    """Grouped bars: mean test PPL per cell (x) and method (bar), std over seeds as error bars; log scale when
    the cells' PPLs span more than a factor of 10 (uncompressed next to 90% pruned)."""
    methods = _methods(records)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(records) + 2), 3.8))
    means_all = []
    for i, method in enumerate(methods):
        xs, means, stds = [], [], []
        for x, r in enumerate(records):
            if method in r["settings"]["methods"]:
                stats = mean_std(ppl_values(r, method))
                xs.append(x + (i - (len(methods) - 1) / 2) * width)
                means.append(stats["mean"])
                stds.append(stats["std"])
        means_all += means
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=method)
    if max(means_all) > 10 * min(means_all):
        ax.set_yscale("log")
    ax.set_xticks(range(len(records)), [r["name"] for r in records], rotation=30 if len(records) > 6 else 0,
                  ha="right" if len(records) > 6 else "center", fontsize=8)
    ax.set_ylabel("test PPL (response tokens)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def gating_figures(record: dict, out: Path) -> list[Path]:
    """Per seed: the task x expert gate after pretraining, at each evaluation during training, and at the end."""
    paths = []
    for seed, entry in record["per_seed"].items():
        stages = []
        if "gate_pretrained" in entry:
            stages.append(("pretrained", entry["gate_pretrained"]))
        stages += [(f"step {e['step']}", e["gate"]) for e in entry["mops"].get("gate_during", [])]
        stages.append(("final", entry["mops"]["gate"]))
        for label, matrix in stages:
            name = f"gate_seed{seed}_{label.replace(' ', '')}.png"
            paths.append(save_gate_heatmap(matrix, record["tasks"], f"{record['name']}, seed {seed}: {label}", out / name))
    return paths


def final_gate_figures(records: Sequence[dict], out: Path) -> list[tuple[Path, dict]]:
    """Per cell with a gate (mops, lora_mops): the task x expert gate after training, first seed."""
    figures = []
    for r in records:
        gated = [m for m in r["settings"]["methods"] if METHODS[m].uses_gate]
        if not gated:
            continue
        seed, entry = next(iter(r["per_seed"].items()))
        slug = re.sub(r"[^A-Za-z0-9]+", "_", r["name"].replace("%", "pct")).strip("_")
        path = out / f"gate_{slug}.png"
        title = f"{r['name']}: {gated[0]} gate after training (seed {seed})"
        figures.append((save_gate_heatmap(entry[gated[0]]["gate"], r["tasks"], title, path), r))
    return figures


def write_reports(grid, records: Sequence[dict], out: Path) -> Path:
    """results.md (+ PNGs) for the grid's kind of experiment."""
    text = [f"# {grid.title}\n", "Test perplexity on response tokens (lower is better), mean +- std over seeds; "
            "gain of B vs A = (A - B) / A, paired per seed (same frozen parts, data order, steps). Every number and setting: results.json.\n"]
    text.append(comparison_table(records))
    if grid.experiment == "table":
        png = table_figure(records, grid.title, out / "table.png")
        text.append(f"\n![{grid.title}]({png.name})\n")
        text += [f"\n![gate {r['name']}]({png.name})" for png, r in final_gate_figures(records, out)]
        text.append("\n")
    if grid.experiment in ("layers", "prompts"):
        field = "injection_layer" if grid.experiment == "layers" else "prompts_per_expert"
        xs = [r["resolved"]["mop"][field] for r in records]
        label = "injection layer" if grid.experiment == "layers" else "prompts per expert (merge: slots per input)"
        png = sweep_figure(records, label, xs, grid.title, out / f"{grid.experiment}.png")
        text.append(f"\n![{grid.title}]({png.name})\n")
    if grid.experiment == "gating":
        for record in records:
            for png in gating_figures(record, out):
                text.append(f"\n![{png.stem}]({png.name})")
        text.append("\n")
    path = out / "results.md"
    path.write_text("\n".join(text))
    return path
