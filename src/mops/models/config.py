"""`ModelConfig`: which base model a run loads, how (dtype, device), and whether it is compressed first
(declared once; the CLI, config files, grids and the Flower run config derive from it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mops.models.registry import DEFAULT_MODEL


@dataclass
class ModelConfig:
    """The frozen base of a run. `compress` is the short form `mops.compression.CompressionConfig.parse` reads;
    calibrated methods use the run's data and seed."""

    model: str = field(default=DEFAULT_MODEL, metadata={
        "help": "Short name (smollm2-135m, gemma3-270m), model folder, .gguf file or hub id.", "flags": ("-m",)})
    compress: str | None = field(default=None, metadata={
        "help": "Compress the base first (cached; calibrated on this run's train split): sparsegpt:0.85, "
                "magnitude:2:4 (N pruned of every M), wanda:0.5+int8, int8 ... See `mops compress`."})
    dtype: str = field(default="auto", metadata={"help": "auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1 ..."})

    def to_dict(self) -> dict:
        return asdict(self)
