"""LoRA and IA3 baselines through the real `peft` library (the paper's Table 4 settings by default).

They run inside the same `MoPModel` as every other method, so they see the same compressed base, the same
frozen input prompts P^1 (the expert slots stay at P^1's states, frozen, with no gate) and the same batches;
only the adapted weights differ. Their weights live in every layer, so the frozen-prefix cache is not used.
"""

from __future__ import annotations

from torch import nn

from mops.models.loading import silence_bitsandbytes
from mops.errors import ConfigError

PEFT_KINDS = ("lora", "ia3")


def peft_config(method: str, cfg):
    """LoRA r, alpha, dropout on `cfg.peft_targets` (paper: r=2, alpha=32, dropout 0.05 on q/v); IA3 on the same.
    `cfg`: any object with those fields (the run's `TrainConfig`)."""
    silence_bitsandbytes()  # importing peft imports bitsandbytes, which warns about optional CPU kernels
    from peft import IA3Config, LoraConfig

    targets = [t.strip() for t in cfg.peft_targets.split(",") if t.strip()]
    if method == "lora":
        return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
    if method == "ia3":
        return IA3Config(target_modules=targets, feedforward_modules=[], task_type="CAUSAL_LM")
    raise ConfigError(f"unknown peft adapter {method!r}; known: {PEFT_KINDS}")


def attach_peft(lm: nn.Module, method: str, cfg):
    """Inject the adapter into `lm` in place (its own forward now includes it); returns the `PeftModel`
    wrapper, for `save_pretrained` and `unload`."""
    config = peft_config(method, cfg)
    from peft import get_peft_model

    try:
        return get_peft_model(lm, config)
    except ValueError as err:  # e.g. target modules not found in this architecture
        raise ConfigError(f"{method}: {err} (set --set peft_targets=... to this model's module names)") from err
