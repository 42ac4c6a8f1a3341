"""Training step time, tokens/s, FLOPs per token, MFU and peak memory, side by side in one run, on real Dolly
batches (<= 256 tokens + 70 prompts), eager and (on a GPU) torch.compile:

- mops core (full logits): the "MoPs core" forward: all 30 layers, LM head at every slot and token position
- mops: the same model, LM head only where the loss is
- mops cached: layers below the injection layer read from the prefix cache (exact), response-only logits
- mops cached, grouped: the same with length-grouped batches (the training default), fewer padded positions
- prompts@L cached (no gate): the baseline at the same layer; the difference to "mops cached" is the gate
- prompts@0: the same prompts at the input layer (the whole model is backpropagated)
- peft PromptTuning@0: the real peft library, 70 virtual tokens

    python benchmarks/train_step.py                     # CPU: batch 1 and 8, eager
    python benchmarks/train_step.py --dtype bfloat16    # GPU: batch 1, 8, 32, 128, eager and compiled
    python benchmarks/train_step.py --model DIR --random-init   # weights drawn from DIR's config (throughput only)

Timing: `--warmup` untimed steps, then `--steps` timed ones between two CUDA events (on the CPU: wall time),
so the host's launch queue and the device are both measured and nothing waits on the device in between.
FLOPs are counted from the model's shapes for each batch actually run (`step_flops`); MFU divides the
achieved FLOP/s by the chip's dense bf16 peak (`PEAK_TFLOPS`, or --peak-tflops). Peak memory: the
device's `max_memory_allocated` per configuration (on the CPU: the process's peak RSS, once).

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
from typing import Callable, Sequence

import torch
from peft import PromptTuningConfig, get_peft_model
from rich.console import Console
from torch._dynamo.utils import counters
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from mops.data import Tokenizer, load_splits
from mops.data.tokenization import IGNORE_INDEX, Encoded
from mops.evaluation.perplexity import device_batch, token_nll
from mops.models import load_base_model
from mops.models.loading import DTYPES, BaseModel, resolve_device, resolve_dtype
from mops.reports.tables import rich_table
from mops.training.sampler import step_indices
from mops.tuners.mops.config import MoPConfig
from mops.tuners.mops.model import MoPModel, decoder_layers
from mops.tuners.mops.prefix_cache import mop_logits_fn, open_prefix_cache

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by a substring of torch.cuda.get_device_name().
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "RTX 4090": 165.2}


def peak_tflops(device: torch.device, dtype: torch.dtype, given: float | None) -> float | None:
    """The chip's dense peak for `dtype` (None where unknown: the CPU, fp32, an unlisted GPU)."""
    if given is not None:
        return given
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def step_flops(cfg, batch: Sequence[Encoded], slots: int, layers_fwd: int, layers_bwd: int,
               head_all_positions: bool) -> float:
    """FLOPs of one training step over `batch` (matmuls only, multiply-add = 2 FLOPs).

    Every example runs `slots` + its tokens through `layers_fwd` decoder layers (causal attention: query j
    reads j + 1 keys); the backward crosses `layers_bwd` of them. The base is frozen, so a layer's backward
    computes input gradients only: as many FLOPs as its forward for the linear maps, twice for attention
    (gradients towards Q, K and V). The LM head runs where the loss is (forward and backward), or at every
    position with `head_all_positions` (the full-logits forward)."""
    d, heads, ff, vocab = cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size, cfg.vocab_size
    kv = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or d // heads
    linear = 2 * (2 * d * heads * head_dim + 2 * d * kv * head_dim + 3 * d * ff)  # q, o; k, v; gated MLP
    total = 0.0
    for enc in batch:
        positions = slots + len(enc.input_ids)
        attention = 2 * 2 * heads * head_dim * positions * (positions + 1) / 2  # QK^T and AV, causal
        labelled = sum(label != IGNORE_INDEX for label in enc.labels[1:])
        head = 2 * d * vocab * (positions if head_all_positions else labelled)
        total += layers_fwd * (linear * positions + attention) + layers_bwd * (linear * positions + 2 * attention)
        total += 2 * head
    return total


def timed(step: Callable[[int], None], steps: int, warmup: int, device: torch.device) -> tuple[float, float, int]:
    """(seconds per step over `steps` timed calls after `warmup` untimed ones, seconds of the first call,
    frames torch.compile compiled during the timed calls: 0 unless a shape or a guard forced a recompile)."""
    t0 = time.perf_counter()
    step(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for i in range(1, warmup):
        step(i)
    compiled = counters["frames"]["ok"]
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(steps):
            step(warmup + i)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1000 / steps
    else:
        t0 = time.perf_counter()
        for i in range(steps):
            step(warmup + i)
        seconds = (time.perf_counter() - t0) / steps
    return seconds, first, counters["frames"]["ok"] - compiled


def trainer(logits_fn, params, batches) -> Callable[[int], None]:
    """A step function: response-token loss of batch i, backward, AdamW step (no host sync)."""
    opt = torch.optim.AdamW(params, lr=1e-3)

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        nll, count = token_nll(logits_fn(b, b["positions"]), b["labels"], b["positions"])
        (nll.sum() / count.sum()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def load(args: argparse.Namespace) -> BaseModel:
    """The base: loaded as mops loads it, or (`--random-init`) built from the folder's config and tokenizer
    with random weights, for throughput rows on a machine without the weights."""
    if not args.random_init:
        return load_base_model(args.model, dtype=args.dtype)
    device = resolve_device()
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.model), dtype=dtype,
                                             attn_implementation="sdpa")
    model = model.to(device).eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return BaseModel(model, tokenizer, f"{args.model} (random init)", args.model)


def compile_layers(model: torch.nn.Module, backend: str) -> None:
    """Compile every decoder layer in place (hooks included), shapes dynamic; `torch.compiler.set_stance`
    switches between these and eager without recompiling."""
    config = torch._dynamo.config
    # Graphs differ by grad mode, mask (None when nothing is padded) and which side of the injection layer a
    # layer is on; `layer_idx` as a symbolic int groups the layers into those sides instead of one graph per
    # layer. A generous limit keeps every variant compiled instead of falling back to eager.
    config.allow_unspec_int_on_nn_module = True
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, 256)
    for layer in decoder_layers(model):
        layer.compile(backend=backend, dynamic=True)


# key -> (row name, MoPConfig overrides, cached (None: full logits), length-grouped batches); "peft0" is peft's own.
CONFIGS = {
    "core": ("mops core (full logits)", {}, None, False),
    "mops": ("mops", {}, False, False),
    "cached": ("mops cached", {}, True, False),
    "grouped": ("mops cached, grouped", {}, True, True),
    "baseline_cached": ("prompts@L cached (no gate)", {"use_gate": False}, True, False),
    "prompts0": ("prompts@0", {"use_gate": False, "injection_layer": 0}, False, False),
    "peft0": ("peft PromptTuning@0", None, None, False),
}


def run_batch_size(base: BaseModel, encoded: list[Encoded], bs: int, mode: str, args, peak: float | None) -> list[dict]:
    """Every configuration at batch size `bs` in `mode` (eager / compiled): one result row each."""
    device, pad, cfg = base.model.device, base.tokenizer.pad_token_id, base.model.config
    n_layers = cfg.num_hidden_layers
    lengths = [len(e.input_ids) for e in encoded]
    n_batches = args.steps + args.warmup
    picks = {grouped: [step_indices(len(encoded), bs, i, 0, lengths if grouped else None) for i in range(n_batches)]
             for grouped in (False, True)}
    batch_sets = {g: [device_batch([encoded[j] for j in idx], idx, pad, device) for idx in p] for g, p in picks.items()}
    rows = []

    def measure(name: str, step: Callable[[int], None], grouped: bool, layers_fwd: int, layers_bwd: int,
                slots: int, head_all: bool) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        seconds, first, recompiled = timed(step, args.steps, args.warmup, device)
        timed_picks = [picks[grouped][(args.warmup + i) % n_batches] for i in range(args.steps)]
        tokens = sum(lengths[j] for idx in timed_picks for j in idx) / args.steps
        flops = sum(step_flops(cfg, [encoded[j] for j in idx], slots, layers_fwd, layers_bwd, head_all)
                    for idx in timed_picks) / args.steps
        rows.append({"config": name, "mode": mode, "batch": bs, "ms_per_step": 1000 * seconds,
                     "tokens_per_s": tokens / seconds, "tokens_per_step": tokens, "first_step_s": first,
                     "compiles_during_timing": recompiled,
                     "flops_per_token": flops / tokens, "tflops_per_s": flops / seconds / 1e12,
                     "mfu": flops / seconds / (peak * 1e12) if peak else None,
                     "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None})

    for key in args.configs:
        name, overrides, cached, grouped = CONFIGS[key]
        if overrides is None:
            continue
        mop = MoPModel(base, MoPConfig(prompt_init="vocab", **overrides))
        params = mop.set_stage("mop")
        layer = mop.config.injection_layer
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
        measure(name, trainer(fn, params, batch_sets[grouped]), grouped, n_layers - layer if cached else n_layers,
                n_layers - layer, mop.config.num_slots, cached is None)
        mop.unload()
    if "peft0" not in args.configs:
        return rows
    k = MoPConfig().num_slots
    peft_model = get_peft_model(base.model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=k))
    peft_fn = lambda b, p, m=peft_model, k=k: m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, k:][:, p]
    params = [p for p in peft_model.parameters() if p.requires_grad]
    measure("peft PromptTuning@0", trainer(peft_fn, params, batch_sets[False]), False, n_layers, n_layers, k, True)
    base.model = peft_model.get_base_model()
    return rows


def ratios(rows: list[dict], layer: int) -> dict:
    """The comparisons the issue's targets are stated in, from one batch size and mode's rows."""
    t = {r["config"]: r for r in rows}
    wanted = {  # name: (numerator row, denominator row, quantity, 1 - ratio)
        "tokens_per_s_cached_grouped_over_core": ("mops cached, grouped", "mops core (full logits)", "tokens_per_s", False),
        "tokens_per_s_cached_over_core": ("mops cached", "mops core (full logits)", "tokens_per_s", False),
        f"mops_cached_at_L{layer}_over_prompts_at_0": ("mops cached", "prompts@0", "ms_per_step", False),
        f"mops_cached_grouped_at_L{layer}_over_prompts_at_0": ("mops cached, grouped", "prompts@0", "ms_per_step", False),
        "gate_share_of_step": ("prompts@L cached (no gate)", "mops cached", "ms_per_step", True),
    }
    out = {"batch": rows[0]["batch"], "mode": rows[0]["mode"]}
    for name, (a, b, what, complement) in wanted.items():
        if a in t and b in t:
            ratio = t[a][what] / t[b][what]
            out[name] = 1 - ratio if complement else ratio
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--random-init", action="store_true", help="--model is a folder with config and tokenizer: "
                        "draw the weights at random (throughput only).")
    parser.add_argument("--batch-sizes", default=None, help="Comma-separated (default: 1,8 on CPU, 1,8,32,128 on GPU).")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=None, help="Timed steps (default: 3 on CPU, 20 on GPU).")
    parser.add_argument("--warmup", type=int, default=None, help="Untimed steps first (default: 1 on CPU, 3 on GPU).")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"Comma-separated rows to run, of {', '.join(CONFIGS)}.")
    parser.add_argument("--modes", default=None, help="eager, compiled or both (default: eager on CPU, both on GPU).")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: capture only).")
    parser.add_argument("--peak-tflops", type=float, default=None, help="The chip's peak for MFU (default: by name).")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    base = load(args)
    device = base.model.device
    gpu = device.type == "cuda"
    args.steps = args.steps or (20 if gpu else 3)
    args.warmup = args.warmup or (3 if gpu else 1)
    sizes = [int(b) for b in (args.batch_sizes or ("1,8,32,128" if gpu else "1,8")).split(",")]
    modes = [m.strip() for m in (args.modes or ("eager,compiled" if gpu else "eager")).split(",")]
    if set(modes) - {"eager", "compiled"}:
        parser.error(f"--modes: eager and/or compiled, got {args.modes!r}")
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if set(args.configs) - set(CONFIGS):
        parser.error(f"--configs: any of {', '.join(CONFIGS)}, got {args.configs!r}")
    peak = peak_tflops(device, base.model.dtype, args.peak_tflops)
    width, store = base.model.config.hidden_size, base.model.dtype.itemsize
    cache_sizes = {}
    for data in ("dolly", "sni"):
        s = load_splits(data)
        lengths = [len(e.input_ids) for e in Tokenizer(base.tokenizer, s.tasks, args.max_length).encode_all(s.train + s.test)]
        cache_sizes[data] = {"examples": len(lengths), "tokens": sum(lengths),
                             "bytes": sum(lengths) * width * store + len(lengths) * (width * 4 + 1)}
    splits = load_splits("dolly")
    encoded = Tokenizer(base.tokenizer, splits.tasks, args.max_length).encode_all(splits.train)
    layer = MoPConfig().validate_for(base.model.config.num_hidden_layers).injection_layer
    out = args.output or Path("benchmarks/results") / f"train_step_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": "train_step", "model": args.model, "random_init": args.random_init, "device": str(device),
        "device_name": torch.cuda.get_device_name() if gpu else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "dtype": str(base.model.dtype), "max_length": args.max_length,
        "prompts": MoPConfig().num_slots, "steps": args.steps, "warmup": args.warmup, "modes": modes,
        "compile_backend": args.compile_backend if "compiled" in modes else None, "peak_tflops": peak,
        "torch": torch.__version__, "prefix_cache_size_full_datasets": cache_sizes, "results": [],
    }
    table = []
    if "compiled" in modes:
        compile_layers(base.model, args.compile_backend)
    for mode in modes:
        with torch.compiler.set_stance("default" if mode == "compiled" else "force_eager"):
            for bs in sizes:
                rows = run_batch_size(base, encoded, bs, mode, args, peak)
                summary = ratios(rows, layer)
                payload["results"] += rows + [summary]
                payload["host_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                out.write_text(json.dumps(payload, indent=2) + "\n")  # after every batch size: a time limit keeps it
                table += [[r["config"], mode, bs, f"{r['ms_per_step']:.1f}", f"{r['tokens_per_s']:,.0f}",
                           f"{r['mfu']:.1%}" if r["mfu"] is not None else "",
                           f"{r['peak_memory_mb']:,.0f}" if r["peak_memory_mb"] is not None else ""] for r in rows]
                table += [[name, mode, bs, f"{value:.3f}", "", "", ""] for name, value in summary.items()
                          if name not in ("batch", "mode")]
    Console().print(rich_table(f"train step ({args.model}, Dolly <= {args.max_length} tokens + 70 prompts, {device})",
                               ["config", "mode", "batch", "ms/step", "tokens/s", "MFU", "peak MiB"], table))
    Console().print({d: f"{v['bytes'] / 2**20:.0f} MiB" for d, v in cache_sizes.items()}, "prefix cache on disk")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
