"""`MoPConfig`: the Mixture-of-Prompts adapter settings, validated, with help text (PEFT style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from mops.errors import ConfigError

GATE_MODES = ("scaled", "softmax")
PROMPT_INITS = ("input_prompts", "vocab", "random", "text")


@dataclass
class MoPConfig:
    """Settings of a MoPs adapter. `validate_for(num_layers)` resolves defaults that depend on the model."""

    num_experts: int = field(default=7, metadata={"help": "Expert groups E (paper: 7, one per task)."})
    prompts_per_expert: int = field(default=10, metadata={"help": "Soft prompts per expert (paper: 10)."})
    injection_layer: int | None = field(
        default=None,
        metadata={"help": "Decoder layer L_int whose input the expert prompts replace (0 = input layer); "
                          "default: round(num_layers / 3) (paper: 10 of 32)."},
    )
    num_input_prompts: int | None = field(
        default=None,
        metadata={"help": "Frozen input prompts P^1 in front of the tokens: E * prompts_per_expert (default) "
                          "or 0 (none: the prompt slots stay invisible below the injection layer)."},
    )
    gate_hidden_size: int = field(default=256, metadata={"help": "Hidden width d_g of the gate MLP."})
    gate_mode: str = field(
        default="scaled",
        metadata={"help": "scaled: weights E * softmax (a uniform gate is neutral, equal to no gate); "
                          "softmax: the paper's plain softmax weights (sum to 1)."},
    )
    use_gate: bool = field(
        default=True, metadata={"help": "False: plain prompt tuning at the injection layer (the paper's baseline)."}
    )
    prompt_init: str = field(
        default="input_prompts",
        metadata={"help": "Expert prompt init: input_prompts (the hidden states P^1 has at the injection layer, "
                          "so training starts from the frozen-input-prompt model), vocab (random token "
                          "embeddings), random (normal, embedding scale), text (embeddings of prompt_init_text)."},
    )
    prompt_init_text: str | None = field(default=None, metadata={"help": "Text for prompt_init='text'."})
    init_seed: int = field(default=0, metadata={"help": "Seed of the input and expert prompt initialisation."})
    tasks: list[str] = field(
        default_factory=list, metadata={"help": "Task names in order; task i is pretrained onto expert i mod E."}
    )

    def __post_init__(self) -> None:
        for name in ("num_experts", "prompts_per_expert", "gate_hidden_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"MoPConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.gate_mode not in GATE_MODES:
            raise ConfigError(f"MoPConfig.gate_mode must be one of {GATE_MODES}, got {self.gate_mode!r}")
        if self.prompt_init not in PROMPT_INITS:
            raise ConfigError(f"MoPConfig.prompt_init must be one of {PROMPT_INITS}, got {self.prompt_init!r}")
        if self.prompt_init == "text" and not self.prompt_init_text:
            raise ConfigError("MoPConfig.prompt_init='text' needs prompt_init_text")
        if self.num_input_prompts is None:
            self.num_input_prompts = self.num_prompts
        if self.num_input_prompts not in (0, self.num_prompts):
            raise ConfigError(
                f"MoPConfig.num_input_prompts must be 0 or num_experts * prompts_per_expert = {self.num_prompts} "
                f"(the input prompts and the experts share the same {self.num_prompts} positions), "
                f"got {self.num_input_prompts}"
            )
        if self.prompt_init == "input_prompts" and self.num_input_prompts == 0:
            self.prompt_init = "vocab"

    @property
    def num_prompts(self) -> int:
        """K: all expert prompts together (= the prompt slots in front of the tokens)."""
        return self.num_experts * self.prompts_per_expert

    def validate_for(self, num_layers: int) -> "MoPConfig":
        """Fill the default injection layer and check it against the model's depth."""
        if self.injection_layer is None:
            self.injection_layer = max(0, min(num_layers - 1, round(num_layers / 3)))
        if not 0 <= self.injection_layer < num_layers:
            raise ConfigError(
                f"MoPConfig.injection_layer must be in [0, {num_layers - 1}] for this {num_layers}-layer model, "
                f"got {self.injection_layer}"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MoPConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown MoPConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)
