"""The paper's experiments as grids, at two sizes: `quick` (2 CPU cores: minutes per cell) and `full` (a GPU).

table2: centralised, Dolly and SNI, the 7 pruning settings, baseline vs MoPs. table4: uncompressed and
75/85/90% pruned, prompt tuning vs MoPs vs LoRA vs IA3. table6: int8 and int8 + pruning, the same methods.
table8: MoPs trained on top of the frozen LoRA-tuned model (method lora_mops) vs LoRA and MoPs alone.
fig3: injection layer sweep. fig4: prompts-per-expert sweep. gating: gate heatmaps before / during / after
training. table3: federated (Flower), Dolly and SNI, the 7 pruning settings, FedPrompt vs MoPs. table5: federated,
int8 and int8 + pruning, FedPrompt vs MoPs.
"""

from __future__ import annotations

from mops.errors import ConfigError
from mops.models.registry import model_depth
from mops.reproduce.grid import Cell, Grid, cell_from_dict

PRUNING = {"90%": "sparsegpt:0.9", "85%": "sparsegpt:0.85", "75%": "sparsegpt:0.75", "7:8": "sparsegpt:7:8",
           "3:4": "sparsegpt:3:4", "2:4": "sparsegpt:2:4", "4:8": "sparsegpt:4:8"}
PEFT_ROWS = {"uncompressed": None, "75%": "sparsegpt:0.75", "85%": "sparsegpt:0.85", "90%": "sparsegpt:0.9"}
INT8_ROWS = {"int8": "int8", "int8 + 75%": "sparsegpt:0.75+int8", "int8 + 85%": "sparsegpt:0.85+int8",
             "int8 + 90%": "sparsegpt:0.9+int8"}
SIZES = {
    # lr: prompts (baseline and MoPs) and LoRA / IA3 at the best of a sweep at 75% (results/experiments.md,
    # results/reproduce/peft-lr)
    # quick computes in bf16 (prompts and gate fp32): 1.48x faster MoPs steps on this CPU, PPL within the seed
    # spread of fp32 (results/bf16-cpu)
    "quick": dict(max_length=128, dtype="bfloat16", train=dict(steps=40, batch_size=4, lr=1e-1, gate_lr=1e-4, lora_lr=1e-3, ia3_lr=3e-2,
                                             recovery_steps=20, recovery_lr=1e-2, gate_pretrain_steps=200,
                                             gate_pretrain_examples=280, eval_limit_per_task=10, checkpoint_every=20),
                  federation=dict(num_clients=10, clients_per_round=2, rounds=3, local_steps=10), client_batch_size=4),
    "full": dict(max_length=256, train=dict(steps=2000, batch_size=8, lr=1e-2, gate_lr=1e-4, recovery_steps=300,
                                            recovery_lr=1e-2, gate_pretrain_steps=300, gate_pretrain_examples=1000,
                                            checkpoint_every=200),
                 # the paper's federation: 100 clients, 10 per round, 250 local steps at batch 1
                 federation=dict(num_clients=100, clients_per_round=10, rounds=20, local_steps=250), client_batch_size=1),
}


EXPERIMENTS = ("table2", "table3", "table4", "table5", "table6", "table8", "fig3", "fig4", "gating")


def builtin_grid(experiment: str, size: str = "quick", model: str = "smollm2-135m",
                 seeds: list[int] | None = None) -> Grid:
    """The grid of one of the paper's experiments, at `size` (quick or full), on `model`."""
    if size not in SIZES:
        raise ConfigError(f"size must be quick or full, got {size!r}")
    fed = SIZES[size]["federation"]
    base = {"max_length": SIZES[size]["max_length"], "train": SIZES[size]["train"], "model": model,
            "seeds": seeds or [0, 1, 2], **({"dtype": SIZES[size]["dtype"]} if "dtype" in SIZES[size] else {})}

    def cell(name: str, **settings) -> Cell:
        merged = {**base, **settings}
        merged["train"] = {**base["train"], **settings.get("train", {})}
        return cell_from_dict({"name": name, **merged}, f"{experiment} cell {name!r}")

    def federated_cell(name: str, **settings) -> Cell:
        """The same training settings as the centralised cells (clients train at their own batch size)."""
        train = {**base["train"], "batch_size": SIZES[size]["client_batch_size"]}
        return cell(name, train=train, methods=["fedprompt", "mops"],
                    federated={**fed, **settings.pop("federated", {})}, **settings)

    if experiment == "table2":
        cells = [cell(f"{data} {row}", data=data, compress=spec) for data in ("dolly", "sni")
                 for row, spec in PRUNING.items()]
        return Grid("table", "Table 2: centralised, baseline vs MoPs (test PPL)", cells)
    if experiment == "table3":
        cells = [federated_cell(f"{data} {row}", data=data, compress=spec) for data in ("dolly", "sni")
                 for row, spec in PRUNING.items()]
        return Grid("table", "Table 3: federated on Flower, FedPrompt vs MoPs (test PPL)", cells)
    if experiment == "table5":  # the paper's Table 5 federates 10 clients at every size
        clients = {"num_clients": 10, "clients_per_round": min(10, fed["clients_per_round"])}
        cells = [federated_cell(row, compress=spec, federated=clients)
                 for row, spec in INT8_ROWS.items()]
        return Grid("table", "Table 5: federated, int8 + pruning, FedPrompt vs MoPs (test PPL, Dolly)", cells)
    if experiment in ("table4", "table6"):
        rows = PEFT_ROWS if experiment == "table4" else INT8_ROWS
        methods = ["baseline", "mops", "lora", "ia3"]
        cells = [cell(row, compress=spec, methods=methods) for row, spec in rows.items()]
        title = "Table 4: prompt tuning, MoPs, LoRA, IA3" if experiment == "table4" else "Table 6: int8 + pruning"
        return Grid("table", f"{title} (test PPL, Dolly)", cells)
    if experiment == "table8":
        cells = [cell("uncompressed", methods=["lora", "mops", "lora_mops"])]
        return Grid("table", "Table 8: LoRA, MoPs, and MoPs on the frozen LoRA-tuned model (test PPL, Dolly)", cells)
    if experiment == "fig3":  # the paper's layers of a 30-layer model, scaled to this model's depth
        depth = model_depth(model)
        layers = sorted({max(1, min(depth - 1, round(n * depth / 30)))
                         for n in ((3, 10, 20) if size == "quick" else (1, 3, 5, 10, 15, 20, 25))})
        cells = [cell(f"layer {n}", compress="sparsegpt:0.75", mop={"injection_layer": n}) for n in layers]
        return Grid("layers", "Fig. 3: injection layer (Dolly, SparseGPT 75%)", cells)
    if experiment == "fig4":
        counts = (14, 35, 70) if size == "quick" else (7, 14, 35, 70, 119)  # merge routing: = slots per input
        cells = [cell(f"{n} prompts per expert", compress="sparsegpt:0.75", mop={"prompts_per_expert": n})
                 for n in counts]
        return Grid("prompts", "Fig. 4: prompts per expert (Dolly, SparseGPT 75%)", cells)
    if experiment == "gating":
        steps = base["train"]["steps"]
        cells = [cell("dolly 75%", compress="sparsegpt:0.75", train={"eval_every": max(1, steps // 4)})]
        return Grid("gating", "Fig. 5: gate weights per task and expert (Dolly, SparseGPT 75%)", cells)
    raise ConfigError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)} (or --grid FILE)")
