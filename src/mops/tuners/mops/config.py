"""`MoPConfig`: the Mixture-of-Prompts adapter settings, validated, with help text (PEFT style)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from mops.errors import ConfigError

GATE_MODES = ("scaled", "softmax")
ROUTINGS = ("attention", "merge")
GATE_INPUTS = ("prompt", "sequence")
PROMPT_INITS = ("input_prompts", "task_examples", "vocab", "random", "text")


@dataclass
class MoPConfig:
    """Settings of a MoPs adapter. `validate_for(num_layers)` resolves defaults that depend on the model."""

    num_experts: int = field(default=7, metadata={"help": "Expert groups E (paper: 7, one per task)."})
    prompts_per_expert: int | None = field(
        default=None,
        metadata={"help": "Soft prompts per expert; default: 70 with merge routing (70 slots per input), 10 with "
                          "attention routing (the paper's 7 x 10 = 70 slots)."},
    )
    injection_layer: int | None = field(
        default=None,
        metadata={"help": "Decoder layer L_int whose input the expert prompts replace (0 = input layer); "
                          "default: round(num_layers / 3) (paper: 10 of 32)."},
    )
    num_input_prompts: int | None = field(
        default=None,
        metadata={"help": "Frozen input prompts P^1 in front of the tokens: one per prompt slot (default) "
                          "or 0 (none: the prompt slots stay invisible below the injection layer)."},
    )
    gate_hidden_size: int = field(default=256, metadata={"help": "Hidden width d_g of the gate MLP."})
    gate_mode: str = field(
        default="scaled",
        metadata={"stage": "gate", "help": "scaled: weights E * softmax (a uniform gate is neutral, equal to no gate); "
                          "softmax: the paper's plain softmax weights (sum to 1)."},
    )
    routing: str = field(
        default="merge",
        metadata={"help": "attention (the paper's): all E * p expert prompts sit in the sequence and the gate "
                          "re-weights attention to each expert's group; merge (SMEAR-style): each expert is a full "
                          "set of p prompts and each input's p slots hold the gate-weighted average of the "
                          "experts (sequence and compute of p prompts, E * p prompt vectors). Default merge: it "
                          "beats prompt tuning where attention routing loses (results/experiments.md)."},
    )
    gate_input: str = field(
        default="prompt",
        metadata={"stage": "gate", "help": "What the gate averages: prompt (instruction + input: what it sees when generating, and "
                          "what gate pretraining trains on) or sequence (every token, the response included)."},
    )
    gate_strength: float = field(
        default=1.0,
        metadata={"stage": "gate", "help": "Attention routing: s in the attention bias s * log(E g): 1 = the gate's full effect, "
                          "0 = neutral (every expert weighted equally, whatever the gate says), in between = a "
                          "softened gate."},
    )
    learn_gate_strength: bool = field(
        default=False, metadata={"stage": "gate", "help": "Train s with the gate (from gate_strength): the run learns how much "
                                         "routing helps."},
    )
    gate_noise: float = field(
        default=0.0, metadata={"stage": "gate", "help": "Std of Gaussian noise on the gate scores during training (router "
                                       "perturbation against collapse; 0 = none)."},
    )
    use_gate: bool = field(
        default=True, metadata={"set_by_run": True, "stage": "gate", "help": "False: plain prompt tuning at the injection layer (the paper's baseline)."}
    )
    prompt_init: str | None = field(
        default=None,
        metadata={"help": "Expert prompt init (default: input_prompts, or vocab without input prompts): "
                          "input_prompts (the hidden states P^1 has at the injection layer, "
                          "so training starts from the frozen-input-prompt model), task_examples (expert e: "
                          "the mean hidden states at the injection layer of prompts_per_expert training "
                          "examples of its task), vocab (random token "
                          "embeddings), random (normal, embedding scale), text (embeddings of prompt_init_text)."},
    )
    prompt_init_text: str | None = field(default=None, metadata={"help": "Text for prompt_init='text'."})
    init_seed: int = field(default=0, metadata={"set_by_run": True, "help": "Seed of the input and expert prompt initialisation."})
    tasks: list[str] = field(
        default_factory=list, metadata={"set_by_run": True, "help": "Task names in order; task i is pretrained onto expert i mod E."}
    )

    def __post_init__(self) -> None:
        if self.prompts_per_expert is None:
            self.prompts_per_expert = 70 if self.routing == "merge" else 10
        for name in ("num_experts", "prompts_per_expert", "gate_hidden_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"MoPConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.gate_mode not in GATE_MODES:
            raise ConfigError(f"MoPConfig.gate_mode must be one of {GATE_MODES}, got {self.gate_mode!r}")
        if self.routing not in ROUTINGS:
            raise ConfigError(f"MoPConfig.routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.gate_input not in GATE_INPUTS:
            raise ConfigError(f"MoPConfig.gate_input must be one of {GATE_INPUTS}, got {self.gate_input!r}")
        if self.gate_noise < 0:
            raise ConfigError(f"MoPConfig.gate_noise must be >= 0, got {self.gate_noise}")
        if self.num_input_prompts is None:
            self.num_input_prompts = self.num_slots
        if self.prompt_init is None:
            self.prompt_init = "input_prompts" if self.num_input_prompts else "vocab"
        if self.prompt_init not in PROMPT_INITS:
            raise ConfigError(f"MoPConfig.prompt_init must be one of {PROMPT_INITS}, got {self.prompt_init!r}")
        if self.prompt_init == "text" and not self.prompt_init_text:
            raise ConfigError("MoPConfig.prompt_init='text' needs prompt_init_text")
        if self.num_input_prompts not in (0, self.num_slots):
            raise ConfigError(
                f"MoPConfig.num_input_prompts must be 0 or the number of prompt slots = {self.num_slots} "
                f"(the input prompts and the experts share the same positions), got {self.num_input_prompts}"
            )
        if self.prompt_init == "input_prompts" and self.num_input_prompts == 0:
            raise ConfigError("MoPConfig.prompt_init='input_prompts' needs input prompts (num_input_prompts=0 "
                              "leaves none): choose task_examples, vocab, random or text")

    @property
    def num_prompts(self) -> int:
        """All expert prompt vectors together: E * prompts_per_expert."""
        return self.num_experts * self.prompts_per_expert

    @property
    def num_slots(self) -> int:
        """K: prompt positions in front of the tokens (E * p with attention routing, p with merge routing)."""
        return self.prompts_per_expert if self.routing == "merge" else self.num_prompts

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
