"""bf16 compute on the CPU against fp32, side by side in one run: paired baseline vs MoPs (the `mops demo`
settings unless given), same seeds, same batches, once with the base in float32 and once in bfloat16 (the
prompts, the gate and Adam's state stay fp32 in both).

    python benchmarks/bf16_cpu.py                          # SmolLM2, Dolly, 30 steps, seeds 0,1,2
    python benchmarks/bf16_cpu.py --steps 40 --compress sparsegpt:0.5

Reports the median optimiser-step time of each method per dtype and the fp32/bf16 ratio, the final test PPL
per seed, MoPs' paired gain per seed, and whether bf16 moves the PPLs by less than the spread over seeds.
Writes <output>/results.json and results.md (default results/bf16-cpu).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from rich.console import Console

from mops.cli.train_cmd import DEMO
from mops.provenance import versions
from mops.reports.stats import mean_std, relative_gain
from mops.reports.tables import markdown_table
from mops.training.runs import RunRequest, execute

DTYPES = ("float32", "bfloat16")
METHODS = ("baseline", "mops")


def step_seconds(run_dir: Path, method: str) -> list[float]:
    """Optimiser-step times of `method` logged in a run folder (metrics.jsonl)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["seconds"] for r in records if r.get("stage") == method and "loss" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="dolly")
    parser.add_argument("--compress", default=None)
    parser.add_argument("--total", type=int, default=5000, help="Examples selected before the split.")
    parser.add_argument("--steps", type=int, default=DEMO["train"]["steps"])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--output", type=Path, default=Path("results/bf16-cpu"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, record = [], {"settings": {**vars(args), "output": str(args.output), "preset": DEMO}, "versions": versions(),
                        "dtypes": {}}
    for dtype in DTYPES:
        settings = {"model": {"model": args.model, "compress": args.compress, "dtype": dtype, "device": "cpu"},
                    "data": {**DEMO["data"], "data": args.data, "total": args.total},
                    "train": {**DEMO["train"], "steps": args.steps}}
        outcome = execute(RunRequest.from_settings(settings, methods=list(METHODS), seeds=seeds,
                                                   output=args.output / dtype, progress=False))
        runs = outcome.per_seed
        folders = [args.output / dtype / f"seed-{s}" for s in seeds] if len(seeds) > 1 else [args.output / dtype]
        times = {m: statistics.median(t for f in folders for t in step_seconds(f, m)) for m in METHODS}
        record["dtypes"][dtype] = {
            "step_seconds_median": times,
            "ppl": {m: [runs[s].ppl(m) for s in seeds] for m in METHODS},
            "gain_percent": [relative_gain(runs[s].ppl("baseline"), runs[s].ppl("mops")) for s in seeds],
        }
    fp32, bf16 = (record["dtypes"][d] for d in DTYPES)
    record["speedup_fp32_over_bf16"] = {m: fp32["step_seconds_median"][m] / bf16["step_seconds_median"][m]
                                        for m in METHODS}
    for m in METHODS:
        diff = [b - a for a, b in zip(fp32["ppl"][m], bf16["ppl"][m])]  # paired: same seed, same batches
        spread = mean_std(fp32["ppl"][m])["std"]
        record.setdefault("ppl_bf16_minus_fp32", {})[m] = {"per_seed": diff, **mean_std(diff), "seed_std_fp32": spread,
                                                          "within_seed_spread": abs(mean_std(diff)["mean"]) <= spread}
    for dtype in DTYPES:
        d = record["dtypes"][dtype]
        g = mean_std(d["gain_percent"])
        rows.append([dtype, f"{d['step_seconds_median']['baseline']:.3f}", f"{d['step_seconds_median']['mops']:.3f}",
                     " ".join(f"{x:.3f}" for x in d["ppl"]["baseline"]), " ".join(f"{x:.3f}" for x in d["ppl"]["mops"]),
                     f"{g['mean']:+.2f} +- {g['std']:.2f}", " ".join(f"{x:+.2f}" for x in d["gain_percent"])])
    table = markdown_table(["dtype", "baseline s/step", "MoPs s/step", "baseline PPL per seed", "MoPs PPL per seed",
                            "MoPs gain % (mean +- std)", "gain % per seed"], rows)
    speed = record["speedup_fp32_over_bf16"]
    text = (f"# bf16 vs fp32 compute on CPU ({args.model}, {args.data}, {args.compress or 'uncompressed'}, "
            f"{args.steps} steps, seeds {seeds})\n\n{table}\nStep time fp32 / bf16: baseline {speed['baseline']:.2f}x, "
            f"MoPs {speed['mops']:.2f}x. PPL change bf16 - fp32 (paired per seed): " + "; ".join(
                f"{m} {v['mean']:+.3f} +- {v['std']:.3f} (seed std {v['seed_std_fp32']:.3f}, "
                f"{'within' if v['within_seed_spread'] else 'OUTSIDE'} the seed spread)"
                for m, v in record["ppl_bf16_minus_fp32"].items()) + "\n")
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(record, indent=2))
    (args.output / "results.md").write_text(text)
    Console().print(text, highlight=False)


if __name__ == "__main__":
    main()
