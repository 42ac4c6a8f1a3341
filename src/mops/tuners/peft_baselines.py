"""LoRA and IA3 baselines through the real `peft` library (the paper's Table 4 settings by default).

They run inside the same `MoPModel` as every other method, so they see the same compressed base, the same
frozen input prompts P^1 (the expert slots stay at P^1's states, frozen, with no gate) and the same batches;
only the adapted weights differ. Their weights live in every layer, so the frozen-prefix cache is not used.

With `match_parameters` the adapter is sized to the trainable-parameter count of the run's MoPs, as the
paper's Appendix E did ("target modules chosen to ensure the same number of trainable parameters"): LoRA by its
rank on the configured targets, IA3 (one vector per adapted module, no rank) by the set of module kinds whose
count is nearest. Hand-written because peft sizes adapters from a rank, not from a parameter budget.
"""

from __future__ import annotations

from itertools import combinations

from torch import nn

from mops.models.loading import silence_bitsandbytes
from mops.errors import ConfigError

PEFT_KINDS = ("lora", "ia3")


def linear_kinds(lm: nn.Module) -> dict[str, list[tuple[int, int]]]:
    """Module name suffix (q_proj, down_proj ...) -> (in_features, out_features) of each linear layer with that
    name inside the decoder (the LM head and embeddings are not adapter targets)."""
    kinds: dict[str, list[tuple[int, int]]] = {}
    for name, module in lm.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if hasattr(module, "in_features") and hasattr(module, "out_features") and leaf != "lm_head" \
                and not any(True for _ in module.children()):
            kinds.setdefault(leaf, []).append((module.in_features, module.out_features))
    return kinds


def lora_count(kinds: dict[str, list[tuple[int, int]]], targets: list[str], r: int) -> int:
    """LoRA's trainable parameters: r * (in + out) per adapted linear layer."""
    return r * sum(i + o for t in targets for i, o in kinds.get(t, []))


def ia3_count(kinds: dict[str, list[tuple[int, int]]], targets: list[str]) -> int:
    """IA3's trainable parameters: one scale per output feature of each adapted linear layer."""
    return sum(o for t in targets for _, o in kinds.get(t, []))


def matched_lora_rank(kinds: dict[str, list[tuple[int, int]]], targets: list[str], count: int) -> int:
    """The rank (>= 1) whose LoRA count on `targets` is nearest `count`."""
    per_rank = lora_count(kinds, targets, 1)
    if per_rank == 0:
        raise ConfigError(f"lora: none of --peft-targets {targets} is a linear layer of this model; "
                          f"its layers: {', '.join(kinds)}")
    low = max(1, count // per_rank)
    return min((low, low + 1), key=lambda r: (abs(r * per_rank - count), r))


def matched_ia3_targets(kinds: dict[str, list[tuple[int, int]]], count: int, prefer: list[str]) -> list[str]:
    """The set of module kinds whose IA3 count is nearest `count`; on a tie the one with more of `prefer` (the
    configured targets), then fewer kinds."""
    names = sorted(kinds)
    subsets = (list(c) for n in range(1, len(names) + 1) for c in combinations(names, n))
    return min(subsets, key=lambda s: (abs(ia3_count(kinds, s) - count), -len(set(s) & set(prefer)), len(s)))


def peft_config(method: str, cfg, kinds: dict[str, list[tuple[int, int]]] | None = None, match: int | None = None):
    """LoRA r, alpha, dropout on `cfg.peft_targets` (paper: r=2, alpha=32, dropout 0.05 on q/v); IA3 on the same.
    With `match` (a parameter count) and the model's `kinds`, LoRA's rank / IA3's targets are sized to it.
    `cfg`: any object with those fields (the run's `TrainConfig`)."""
    silence_bitsandbytes()  # importing peft imports bitsandbytes, which warns about optional CPU kernels
    from peft import IA3Config, LoraConfig

    targets = [t.strip() for t in cfg.peft_targets.split(",") if t.strip()]
    if method == "lora":
        r = matched_lora_rank(kinds, targets, match) if match else cfg.lora_r
        return LoraConfig(r=r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
    if method == "ia3":
        targets = matched_ia3_targets(kinds, match, targets) if match else targets
        return IA3Config(target_modules=targets, feedforward_modules=[], task_type="CAUSAL_LM")
    raise ConfigError(f"unknown peft adapter {method!r}; known: {PEFT_KINDS}")


def attach_peft(lm: nn.Module, method: str, cfg, match: int | None = None):
    """Inject the adapter into `lm` in place (its own forward now includes it); returns the `PeftModel`
    wrapper, for `save_pretrained` and `unload`. `match`: size it to that many trainable parameters."""
    config = peft_config(method, cfg, linear_kinds(lm) if match else None, match)
    from peft import get_peft_model

    try:
        return get_peft_model(lm, config)
    except ValueError as err:  # e.g. target modules not found in this architecture
        raise ConfigError(f"{method}: {err} (set --peft-targets to this model's module names)") from err


def adapter_settings(peft_model, match: int | None) -> dict:
    """What a results file records of an attached adapter: its rank (LoRA), targets, and the count it was
    matched to (None: the configured size)."""
    config = peft_model.peft_config["default"]
    out = {"targets": sorted(config.target_modules), "matched_to": match}
    if getattr(config, "r", None) is not None:
        out["r"] = config.r
    return out
