"""Reports of a grid (`mops reproduce`): `results.md` (tables of mean +- std over seeds, MoPs' paired gain, trainable
parameters) and PNG figures (sweeps, gate heatmaps). Written after every finished cell."""

from __future__ import annotations

import json
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


def _count(entry: dict) -> str:
    """"431,751" or, for a peft adapter, "403,200 (r=7 on q_proj,v_proj; matched to 431,751: -6.6%)"."""
    text = f"{entry['trainable_parameters']:,}"
    adapter = entry.get("adapter")
    if adapter:
        size = (f"r={adapter['r']} on " if "r" in adapter else "on ") + ",".join(adapter["targets"])
        target = adapter.get("matched_to")
        if target:
            size += f"; matched to {target:,}: {100 * (entry['trainable_parameters'] - target) / target:+.1f}%"
        text += f" ({size})"
    return text


def parameter_lines(records: Sequence[dict], methods: Sequence[str]) -> str:
    """Trainable parameters of each method: one line when every cell had the same counts, else one per cell."""
    per_cell = []
    for r in records:
        seed = next(iter(r["per_seed"].values()))
        per_cell.append(", ".join(f"{m} {_count(seed[m])}" for m in methods
                                  if m in r["settings"]["methods"] and seed[m].get("trainable_parameters")))
    if len(set(per_cell)) == 1:
        return f"Trainable parameters: {per_cell[0]}.\n"
    return "Trainable parameters:\n\n" + "".join(f"- {r['name']}: {line}\n" for r, line in zip(records, per_cell))


def comparison_table(records: Sequence[dict]) -> str:
    """Rows = cells; PPL per method (mean +- std over seeds); the paired gain of each method over its registered
    reference (MoPs over prompt tuning or FedPrompt, MoPs on the frozen LoRA model over LoRA) where both ran."""
    methods = _methods(records)
    pairs = method_pairs(methods)
    shapes = [(r["resolved"]["mop"]["injection_layer"], r["resolved"]["mop"]["prompts_per_expert"]) for r in records]
    varied = len(set(shapes)) > 1  # per-row MoPs settings (Table 4 / 6 as the paper ran them): show them
    headers = ["setting", *(["L_int, prompts per expert"] if varied else []), "seeds", *methods]
    for a, b in pairs:
        headers += [f"{b} vs {a}: gain % (mean +- std)", "per seed"]
    rows = []
    for r, (layer, prompts) in zip(records, shapes):
        ran = r["settings"]["methods"]
        row: list[object] = [r["name"], *([f"{layer}, {prompts}"] if varied else []), len(r["per_seed"])]
        row += [format_mean_std(ppl_values(r, m)) if m in ran else "" for m in methods]
        for a, b in pairs:
            g = gains(r, a, b) if a in ran and b in ran else None
            row += [format_mean_std(g, sign="+"), " ".join(f"{x:+.1f}" for x in g)] if g else ["", ""]
        rows.append(row)
    text = markdown_table(headers, rows) + "\n" + parameter_lines(records, methods)
    scored = [r for r in records if all("rougeL" in seed.get(m, {}) for seed in r["per_seed"].values()
                                        for m in r["settings"]["methods"])]
    if scored:  # cells evaluated with --eval-metrics rougeL: the same table in ROUGE-L (x100, higher is better)
        rouge_rows = []
        for r in scored:
            ran, seeds = r["settings"]["methods"], list(r["per_seed"].values())
            row = [r["name"], len(seeds), *(format_mean_std([100 * s[m]["rougeL"] for s in seeds]) if m in ran else ""
                                            for m in methods)]
            for a, b in pairs:  # paired difference in points, per seed (same sign as a PPL gain when both agree)
                d = [100 * (s[b]["rougeL"] - s[a]["rougeL"]) for s in seeds] if a in ran and b in ran else []
                row += [format_mean_std(d, sign="+"), " ".join(f"{x:+.1f}" for x in d)]
            rouge_rows.append(row)
        text += "\nROUGE-L F1 of greedy answers (x100, mean +- std over seeds; B - A in points, paired per seed):\n\n"
        text += markdown_table(["setting", "seeds", *methods,
                                *(h for a, b in pairs for h in (f"{b} - {a} (points)", "per seed"))], rouge_rows)
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


def budget_summary(records: Sequence[dict], reference: str = "baseline", method: str = "mops") -> list[dict]:
    """Per cell and evaluated step: the paired gain of `method` over `reference` after that many steps (each
    seed's curves evaluated at the same steps), as `{data, compress, steps, seeds, gain_mean, gain_std, per_seed}`."""
    rows = []
    for r in records:
        seeds = list(r["per_seed"].values())
        curves = [({p["step"]: p["ppl"] for p in s[reference]["curve"]}, {p["step"]: p["ppl"] for p in s[method]["curve"]})
                  for s in seeds]
        steps = sorted(set.intersection(*(set(a) & set(b) for a, b in curves)))
        for step in steps:
            per_seed = [relative_gain(a[step], b[step]) for a, b in curves]
            stats = mean_std(per_seed)
            rows.append({"cell": r["name"], "data": r["settings"]["data"]["data"],
                         "compress": r["settings"]["model"]["compress"] or "none",
                         "dtype": r["settings"]["model"].get("dtype", "auto"), "steps": step,
                         "seeds": [int(k) for k in r["per_seed"]], "gain_mean": stats["mean"],
                         "gain_std": stats["std"], "per_seed": per_seed,
                         f"{reference}_ppl": mean_std([a[step] for a, _ in curves])["mean"],
                         f"{method}_ppl": mean_std([b[step] for _, b in curves])["mean"]})
    return rows


def budget_report(summary: Sequence[dict], title: str, out: Path) -> str:
    """summary.json, budget.png (gain vs steps, log x, std over seeds as error bars) and a markdown table."""
    (out / "summary.json").write_text(json.dumps(list(summary), indent=2))
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for cell in dict.fromkeys(row["cell"] for row in summary):
        rows = [row for row in summary if row["cell"] == cell]
        ax.errorbar([row["steps"] for row in rows], [row["gain_mean"] for row in rows],
                    yerr=[row["gain_std"] for row in rows], marker="o", capsize=3, label=cell)
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    steps = sorted({row["steps"] for row in summary})
    ax.set_xticks(steps, [str(n) for n in steps])
    ax.minorticks_off()
    ax.set_xlabel("training steps (batch size as configured)")
    ax.set_ylabel("MoPs gain over prompt tuning, % test PPL")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "budget.png", dpi=120)
    plt.close(fig)
    rows = [[row["cell"], row.get("dtype", "auto"), row["steps"], f"{row['baseline_ppl']:.2f}", f"{row['mops_ppl']:.2f}",
             format_mean_std(row["per_seed"], sign="+"), " ".join(f"{g:+.2f}" for g in row["per_seed"])]
            for row in summary]
    return ("\nMoPs gain against training steps (every number: summary.json):\n\n"
            + markdown_table(["cell", "compute dtype", "steps", "baseline PPL", "MoPs PPL", "gain % (mean +- std)", "per seed"], rows)
            + "\n![gain vs steps](budget.png)\n")


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
    if grid.experiment == "budget":
        text.append(budget_report(budget_summary(records), grid.title, out))
    if grid.experiment == "gating":
        for record in records:
            for png in gating_figures(record, out):
                text.append(f"\n![{png.stem}]({png.name})")
        text.append("\n")
    path = out / "results.md"
    path.write_text("\n".join(text))
    return path
