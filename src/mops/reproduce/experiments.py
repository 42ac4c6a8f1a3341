"""The paper's experiments as grids, at two sizes: `quick` (2 CPU cores: minutes per cell) and `full` (a GPU).

table2: centralised, Dolly and SNI, the 7 pruning settings, baseline vs MoPs. table4: uncompressed, 50% / 2:4 and
75/85/90% pruned, prompt tuning vs MoPs vs LoRA vs IA3, with the paper's per-row MoPs settings (its Table 9) and
LoRA / IA3 matched to MoPs' trainable parameters (its Appendix E). table6: int8 and int8 + pruning, the same
methods, MoPs with 119 prompts at layer 1 (its Table 7).
table8: MoPs trained on top of the frozen LoRA-tuned model (method lora_mops) vs LoRA and MoPs alone.
fig3: injection layer sweep. fig4: prompts-per-expert sweep. gating: gate heatmaps before / during / after
training. budget (ours): MoPs' paired gain over prompt tuning against training steps, Dolly and SNI, at two
compressions a 135M model survives. table3: federated (Flower), Dolly and SNI, the 7 pruning settings, FedPrompt vs MoPs. table5: federated,
int8 and int8 + pruning, FedPrompt vs MoPs.
"""

from __future__ import annotations

from mops.errors import ConfigError
from mops.models.loading import fast_dtype
from mops.models.registry import model_depth
from mops.reproduce.grid import Cell, Grid, cell_from_dict

PRUNING = {"90%": "sparsegpt:0.9", "85%": "sparsegpt:0.85", "75%": "sparsegpt:0.75", "7:8": "sparsegpt:7:8",
           "3:4": "sparsegpt:3:4", "2:4": "sparsegpt:2:4", "4:8": "sparsegpt:4:8"}
# Table 4 rows: (compression, MoPs injection layer of the paper's 32-layer Llama-7B from its Table 9; None = the
# default, as in Tables 2-3). The rows the paper did not run (the damage a 135M model survives: 50% PPL 10.4 ->
# 15.2, 2:4 -> 26.5) take the layer of the paper's row nearest in damage.
PEFT_ROWS = {"uncompressed": (None, None), "50%": ("sparsegpt:0.5", None), "2:4": ("sparsegpt:2:4", 3),
             "75%": ("sparsegpt:0.75", 3), "85%": ("sparsegpt:0.85", 3), "90%": ("sparsegpt:0.9", 1)}
# Table 6 rows: the paper's Table 7 ran every int8 row with 119 prompts at layer 1
INT8_ROWS = {"int8": "int8", "int8 + 75%": "sparsegpt:0.75+int8", "int8 + 85%": "sparsegpt:0.85+int8",
             "int8 + 90%": "sparsegpt:0.9+int8"}
INT8_MOP = {"injection_layer": 1, "prompts_per_expert": 119}
PAPER_DEPTH = 32  # Llama-7B's layers, the paper's injection layers are of this depth
SIZES = {
    # lr: prompts (baseline and MoPs) and LoRA / IA3 at the best of a sweep at 75% (results/experiments.md,
    # results/reproduce/peft-lr)
    # quick computes in bf16 (prompts and gate fp32) where the CPU has native bf16: 1.48x faster MoPs steps
    # on an AVX512-BF16 CPU, PPL within the seed spread of fp32 (results/bf16-cpu); in fp32 where it would be
    # emulated (AVX2 CPUs: ~70x slower). The dtype is resolved into each cell, so it enters the cell's key.
    "quick": dict(max_length=128, dtype="fast", train=dict(steps=40, batch_size=4, lr=1e-1, gate_lr=1e-4, lora_lr=1e-3, ia3_lr=3e-2,
                                             recovery_steps=20, recovery_lr=1e-2, gate_pretrain_steps=200,
                                             gate_pretrain_examples=280, eval_limit_per_task=10, checkpoint_every=20),
                  federation=dict(num_clients=10, clients_per_round=2, rounds=3, local_steps=10), client_batch_size=4),
    "full": dict(max_length=256, train=dict(steps=2000, batch_size=8, lr=1e-2, gate_lr=1e-4, recovery_steps=300,
                                            recovery_lr=1e-2, gate_pretrain_steps=300, gate_pretrain_examples=1000,
                                            checkpoint_every=200),
                 # the paper's federation: 100 clients, 10 per round, 250 local steps at batch 1
                 federation=dict(num_clients=100, clients_per_round=10, rounds=20, local_steps=250), client_batch_size=1),
}


# the budget curve: one run of the largest budget per seed, evaluated after each budget. The learning rate is
# constant and the batch of step t is a function of (seed, t) only, so the evaluation after t steps is the result
# of a t-step run (tested). quick: 10 to 160 steps brackets the 40 steps of every other quick result (2 s per
# step on a 2-core AVX2 CPU: ~35 minutes per cell).
BUDGETS = {"quick": (10, 20, 40, 80, 160), "full": (500, 1000, 2000, 4000, 8000)}
SURVIVABLE = {"50%": "sparsegpt:0.5", "2:4": "sparsegpt:2:4"}  # SmolLM2 PPL 10.4 -> 15.2 / 26.5 (not destroyed)
EXPERIMENTS = ("table2", "table3", "table4", "table5", "table6", "table8", "fig3", "fig4", "gating", "budget")


def builtin_grid(experiment: str, size: str = "quick", model: str = "smollm2-135m",
                 seeds: list[int] | None = None) -> Grid:
    """The grid of one of the paper's experiments, at `size` (quick or full), on `model`."""
    if size not in SIZES:
        raise ConfigError(f"size must be quick or full, got {size!r}")
    fed = SIZES[size]["federation"]
    dtype = SIZES[size].get("dtype")
    base = {"max_length": SIZES[size]["max_length"], "train": SIZES[size]["train"], "model": model,
            "seeds": seeds or [0, 1, 2], **({"dtype": fast_dtype() if dtype == "fast" else dtype} if dtype else {})}

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
        # as the paper ran them: per-row MoPs settings, LoRA / IA3 sized to MoPs' trainable parameters, and
        # ROUGE-L of greedy answers beside PPL
        depth = model_depth(model)
        rows = {row: (spec, {} if layer is None else {"injection_layer": max(1, round(layer * depth / PAPER_DEPTH))})
                for row, (spec, layer) in PEFT_ROWS.items()} if experiment == "table4" else \
            {row: (spec, INT8_MOP) for row, spec in INT8_ROWS.items()}
        train = {"match_parameters": True, "eval_metrics": "ppl,rougeL,exact_match"}
        cells = [cell(row, compress=spec, methods=["baseline", "mops", "lora", "ia3"], mop=mop, train=train)
                 for row, (spec, mop) in rows.items()]
        title = "Table 4: prompt tuning, MoPs, LoRA, IA3" if experiment == "table4" else "Table 6: int8 + pruning"
        return Grid("table", f"{title} (test PPL, Dolly; LoRA / IA3 matched to MoPs' trainable parameters)", cells)
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
    if experiment == "budget":
        budgets = BUDGETS[size]
        cells = [cell(f"{data} {row}", data=data, compress=spec,
                      train={"steps": budgets[-1], "eval_at": ",".join(map(str, budgets[:-1]))})
                 for data in ("dolly", "sni") for row, spec in SURVIVABLE.items()]
        return Grid("budget", f"MoPs gain vs training steps ({', '.join(map(str, budgets))} steps; "
                              "baseline vs MoPs, paired per seed)", cells)
    raise ConfigError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)} (or --grid FILE)")
