"""Training step time, side by side in one run: MoPs at L_int, the same prompts without gate, prompts at layer 0,
and peft PromptTuning; batch 1 and 8 on CPU (1/8/32 on GPU). Prints a table and writes JSON.

    python benchmarks/train_step.py                      # SmolLM2-135M, 256 tokens + 70 prompts
    python benchmarks/train_step.py --batch-sizes 1,8,32 --output benchmarks/results/train_step_h100.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from peft import PromptTuningConfig, get_peft_model
from rich.console import Console

from mops.models import load_base_model
from mops.reports.tables import rich_table
from mops.tuners.mops.config import MoPConfig
from mops.tuners.mops.model import MoPModel


def time_steps(step, steps: int, warmup: int, device: torch.device) -> float:
    """Mean seconds per call of `step` after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def make_step(forward, params, ids, mask):
    """One optimiser step of next-token loss over all positions."""
    opt = torch.optim.AdamW(params, lr=1e-3)

    def step() -> None:
        logits = forward(ids, mask)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-sizes", default=None, help="Comma-separated (default: 1,8 on CPU, 1,8,32 on GPU).")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--experts", type=int, default=7)
    parser.add_argument("--prompts-per-expert", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    base = load_base_model(args.model, dtype=args.dtype)
    device = base.model.device
    sizes = [int(b) for b in (args.batch_sizes or ("1,8,32" if device.type == "cuda" else "1,8")).split(",")]
    k = args.experts * args.prompts_per_expert
    gen = torch.Generator().manual_seed(0)
    rows, results = [], []
    for bs in sizes:
        ids = torch.randint(100, 20000, (bs, args.seq_len), generator=gen).to(device)
        mask = torch.ones_like(ids)
        timings: dict[str, float] = {}
        for name, cfg in (
            ("mops@L_int", dict(use_gate=True)),
            ("prompts@L_int (no gate)", dict(use_gate=False)),
            ("prompts@0", dict(use_gate=False, injection_layer=0)),
        ):
            mop = MoPModel(base, MoPConfig(num_experts=args.experts, prompts_per_expert=args.prompts_per_expert,
                                           prompt_init="vocab", **cfg))
            layer = mop.config.injection_layer
            params = mop.set_stage("mop")
            timings[name] = time_steps(make_step(mop, params, ids, mask), args.steps, args.warmup, device)
            mop.unload()
        peft_model = get_peft_model(base.model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=k))
        params = [p for p in peft_model.parameters() if p.requires_grad]
        timings["peft PromptTuning@0"] = time_steps(
            make_step(lambda i, m: peft_model(input_ids=i, attention_mask=m).logits[:, k:], params, ids, mask),
            args.steps, args.warmup, device,
        )
        base.model = peft_model.get_base_model()
        for name, seconds in timings.items():
            record = {"config": name, "batch": bs, "ms_per_step": 1000 * seconds,
                      "tokens_per_s": bs * args.seq_len / seconds}
            results.append(record)
            rows.append([name, bs, record["ms_per_step"], record["tokens_per_s"]])
        results.append({
            "batch": bs,
            "ratio_mops_L_over_prompts_0": timings["mops@L_int"] / timings["prompts@0"],
            "gate_share_of_step": 1 - timings["prompts@L_int (no gate)"] / timings["mops@L_int"],
        })
        rows.append([f"ratio mops@L{layer} / prompts@0", bs, timings["mops@L_int"] / timings["prompts@0"], ""])
        rows.append(["gate share of step", bs, 1 - timings["prompts@L_int (no gate)"] / timings["mops@L_int"], ""])
    payload = {
        "benchmark": "train_step", "model": args.model, "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "dtype": str(base.model.dtype), "seq_len": args.seq_len,
        "prompts": k, "steps": args.steps, "torch": torch.__version__, "results": results,
    }
    Console().print(rich_table(f"train step ({args.model}, {args.seq_len} tokens + {k} prompts, {device})",
                               ["config", "batch", "ms/step", "tokens/s"], rows))
    out = args.output or Path("benchmarks/results") / f"train_step_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
