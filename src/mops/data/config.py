"""`DataConfig`: which data a run reads and how examples become tokens (declared once; the CLI, config files,
grids and the Flower run config derive from it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mops.data.template import TEMPLATES
from mops.errors import ConfigError


@dataclass
class DataConfig:
    """The data of a run: source, tasks, selection size, tokens per example, prompt template."""

    data: str = field(default="dolly", metadata={
        "help": "dolly / sni (bundled), a .jsonl/.json file or folder, or a HF dataset id.", "flags": ("-d",)})
    tasks: str | None = field(default=None, metadata={
        "help": "Comma-separated task names, or 'dolly'/'sni' for the paper's 7 (default: the paper's for bundled "
                "data, else all)."})
    total: int = field(default=5000, metadata={"help": "Examples selected before the train/test split (paper: 5000)."})
    max_length: int = field(default=256, metadata={
        "help": "Tokens per example (prompt + response); the context is truncated first."})
    template: str = field(default="plain", metadata={
        "help": "Prompt template: plain or chat (the tokenizer's chat template)."})
    skip_invalid: bool = field(default=False, metadata={"help": "Skip (and count) bad records instead of stopping."})

    def __post_init__(self) -> None:
        if self.total < 1:
            raise ConfigError(f"--total must be >= 1 (examples selected before the split), got {self.total}")
        if self.max_length < 16:
            raise ConfigError(f"--max-length must be >= 16 tokens, got {self.max_length}")
        if self.template not in TEMPLATES:
            raise ConfigError(f"--template must be one of {', '.join(TEMPLATES)}, got {self.template!r}")

    def to_dict(self) -> dict:
        return asdict(self)
