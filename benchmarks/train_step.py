"""Training step time and tokens/s, side by side in one run, on real Dolly batches (<= 256 tokens + 70 prompts):

- mops core (full logits): the "MoPs core" forward: all 30 layers, LM head at every slot and token position
- mops: the same model, LM head only where the loss is
- mops cached: layers below the injection layer read from the prefix cache (exact), response-only logits
- mops cached, grouped: the same with length-grouped batches (the training default), fewer padded positions
- prompts@L cached (no gate): the baseline at the same layer; the difference to "mops cached" is the gate
- prompts@0: the same prompts at the input layer (the whole model is backpropagated)
- peft PromptTuning@0: the real peft library, 70 virtual tokens

    python benchmarks/train_step.py                     # CPU: batch 1 and 8
    python benchmarks/train_step.py --batch-sizes 1,8,32 --dtype bfloat16   # GPU

Prints a table and writes benchmarks/results/train_step_<device>.json (plus the prefix-cache size on disk
for the bundled 5,000-example datasets).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import torch
from peft import PromptTuningConfig, get_peft_model
from rich.console import Console

from mops.data import Tokenizer, load_splits
from mops.evaluation.perplexity import device_batch, loss_positions, token_nll
from mops.models import load_base_model
from mops.reports.tables import rich_table
from mops.tuners.mops.config import MoPConfig
from mops.tuners.mops.model import MoPModel
from mops.tuners.mops.prefix_cache import mop_logits_fn, open_prefix_cache
from mops.training.sampler import step_indices


def timed(step, steps: int, warmup: int, device: torch.device) -> float:
    """Mean seconds per call of `step` after `warmup` untimed calls."""
    for _ in range(warmup):
        step(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        step(1 + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def trainer(logits_fn, params, batches):
    """A step function: response-token loss of batch i, backward, AdamW step."""
    opt = torch.optim.AdamW(params, lr=1e-3)

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        positions = loss_positions(b["labels"])
        nll, count = token_nll(logits_fn(b, positions), b["labels"], positions)
        (nll.sum() / count.sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-sizes", default=None, help="Comma-separated (default: 1,8 on CPU, 1,8,32 on GPU).")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    base = load_base_model(args.model, dtype=args.dtype)
    device = base.model.device
    sizes = [int(b) for b in (args.batch_sizes or ("1,8,32" if device.type == "cuda" else "1,8")).split(",")]
    splits = load_splits("dolly")
    encoded = Tokenizer(base.tokenizer, splits.tasks, args.max_length).encode_all(splits.train)
    pad = base.tokenizer.pad_token_id
    rows, results = [], []
    lengths = [len(e.input_ids) for e in encoded]
    for bs in sizes:
        n_batches = args.steps + args.warmup
        picks = {grouped: [step_indices(len(encoded), bs, i, 0, lengths if grouped else None) for i in range(n_batches)]
                 for grouped in (False, True)}
        batch_sets = {g: [device_batch([encoded[j] for j in idx], idx, pad, device) for idx in p] for g, p in picks.items()}
        tokens = {g: sum(lengths[j] for idx in p for j in idx) / n_batches for g, p in picks.items()}
        timings: dict[str, float] = {}
        per_step_tokens: dict[str, float] = {}
        for name, cfg, cached, grouped in (
            ("mops core (full logits)", {}, None, False),
            ("mops", {}, False, False),
            ("mops cached", {}, True, False),
            ("mops cached, grouped", {}, True, True),
            ("prompts@L cached (no gate)", {"use_gate": False}, True, False),
            ("prompts@0", {"use_gate": False, "injection_layer": 0}, False, False),
        ):
            mop = MoPModel(base, MoPConfig(prompt_init="vocab", **cfg))
            params = mop.set_stage("mop")
            if cached is None:  # the MoPs-core forward: logits at every slot and token position
                def fn(b, positions, mop=mop):
                    embeds, full = mop.prepare_inputs(b["input_ids"], b["attention_mask"])
                    logits = mop.lm(inputs_embeds=embeds, attention_mask=full, use_cache=False).logits
                    return logits[:, mop.config.num_slots :][:, positions]
            else:
                cache = open_prefix_cache(mop, encoded, pad) if cached else None
                for idx in picks[grouped] if cached else []:
                    cache.states(idx)  # computed before timing
                fn = mop_logits_fn(mop, cache)
            timings[name] = timed(trainer(fn, params, batch_sets[grouped]), args.steps, args.warmup, device)
            per_step_tokens[name] = tokens[grouped]
            mop.unload()
        layer = MoPConfig().validate_for(base.model.config.num_hidden_layers).injection_layer
        k = MoPConfig().num_slots
        peft_model = get_peft_model(base.model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=k))
        peft_fn = lambda b, p, m=peft_model, k=k: m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, k:][:, p]
        params = [p for p in peft_model.parameters() if p.requires_grad]
        timings["peft PromptTuning@0"] = timed(trainer(peft_fn, params, batch_sets[False]), args.steps, args.warmup, device)
        per_step_tokens["peft PromptTuning@0"] = tokens[False]
        base.model = peft_model.get_base_model()
        tok_s = {name: per_step_tokens[name] / seconds for name, seconds in timings.items()}
        for name, seconds in timings.items():
            results.append({"config": name, "batch": bs, "ms_per_step": 1000 * seconds,
                            "tokens_per_s": tok_s[name], "tokens_per_step": per_step_tokens[name]})
            rows.append([name, bs, 1000 * seconds, tok_s[name]])
        ratios = {
            "tokens_per_s_cached_grouped_over_core": tok_s["mops cached, grouped"] / tok_s["mops core (full logits)"],
            "tokens_per_s_cached_over_core": tok_s["mops cached"] / tok_s["mops core (full logits)"],
            f"mops_cached_at_L{layer}_over_prompts_at_0": timings["mops cached"] / timings["prompts@0"],
            "gate_share_of_step": 1 - timings["prompts@L cached (no gate)"] / timings["mops cached"],
        }
        results.append({"batch": bs, **ratios})
        rows += [[name, bs, value, ""] for name, value in ratios.items()]
    width, store = base.model.config.hidden_size, base.model.dtype.itemsize
    cache_sizes = {}
    for data in ("dolly", "sni"):
        s = load_splits(data)
        lengths = [len(e.input_ids) for e in Tokenizer(base.tokenizer, s.tasks, args.max_length).encode_all(s.train + s.test)]
        cache_sizes[data] = {"examples": len(lengths), "tokens": sum(lengths),
                             "bytes": sum(lengths) * width * store + len(lengths) * (width * 4 + 1)}
    payload = {
        "benchmark": "train_step", "model": args.model, "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "dtype": str(base.model.dtype), "max_length": args.max_length,
        "prompts": MoPConfig().num_slots, "steps": args.steps, "torch": torch.__version__,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "prefix_cache_size_full_datasets": cache_sizes, "results": results,
    }
    Console().print(rich_table(f"train step ({args.model}, Dolly <= {args.max_length} tokens + 70 prompts, {device})",
                               ["config", "batch", "ms/step", "tokens/s"], rows))
    Console().print({d: f"{v['bytes'] / 2**20:.0f} MiB" for d, v in cache_sizes.items()}, "prefix cache on disk")
    out = args.output or Path("benchmarks/results") / f"train_step_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
