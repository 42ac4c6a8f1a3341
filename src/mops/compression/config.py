"""`CompressionConfig`: what to do to a base model (prune, then optionally LLM.int8()), validated.

N:M follows the paper: N weights are PRUNED out of every M consecutive weights of a row (2:4 and 4:8 are
50% sparse, 3:4 is 75%, 7:8 is 87.5%). llm-compressor's `mask_structure="N:M"` means the same (its
SparseGPT and Wanda set the N lowest-saliency weights of each group of M to zero), so specs pass through.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from mops.errors import ConfigError

PRUNE_METHODS = ("none", "sparsegpt", "wanda", "magnitude")
_PATTERN = re.compile(r"^(\d+):(\d+)$")


def parse_pattern(text: str) -> tuple[int, int]:
    """``"2:4"`` -> (2, 4): N pruned out of every M; rejects N >= M, N = 0 and malformed text."""
    match = _PATTERN.match(text.strip())
    if not match:
        raise ConfigError(f"pattern must look like N:M (e.g. 2:4), got {text!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise ConfigError(f"pattern {text!r}: need 0 < N < M (N weights pruned out of every M)")
    return n, m


@dataclass
class CompressionConfig:
    """Settings of one compression; `key` names its cache folder, `label` is the short form for tables."""

    prune: str = field(default="none", metadata={"help": "none, sparsegpt, wanda or magnitude."})
    ratio: float | None = field(default=None, metadata={"help": "Unstructured sparsity in (0, 1), e.g. 0.85."})
    pattern: str | None = field(default=None, metadata={"help": "N:M structure: N pruned out of every M, e.g. 2:4."})
    int8: bool = field(default=False, metadata={"help": "LLM.int8() (bitsandbytes) after pruning."})
    calib_data: str = field(default="dolly", metadata={"help": "Data whose TRAIN split calibrates SparseGPT/Wanda."})
    calib_samples: int = field(default=128, metadata={"help": "Calibration sequences (SparseGPT paper: 128)."})
    calib_length: int = field(default=256, metadata={"help": "Tokens per calibration sequence."})
    calib_seed: int = field(default=0, metadata={"help": "Seed of the calibration sample."})

    def __post_init__(self) -> None:
        if self.prune not in PRUNE_METHODS:
            raise ConfigError(f"--prune must be one of {', '.join(PRUNE_METHODS)}, got {self.prune!r}")
        if self.prune == "none":
            if self.ratio is not None or self.pattern is not None:
                raise ConfigError("--ratio / --pattern need a pruning method (--prune sparsegpt|wanda|magnitude)")
            if not self.int8:
                raise ConfigError("nothing to do: give --prune METHOD (with --ratio or --pattern) and/or --int8")
        else:
            if (self.ratio is None) == (self.pattern is None):
                raise ConfigError(f"--prune {self.prune} needs exactly one of --ratio (unstructured) or --pattern (N:M)")
            if self.ratio is not None and not 0.0 < self.ratio < 1.0:
                raise ConfigError(f"--ratio must lie strictly between 0 and 1, got {self.ratio}")
            if self.pattern is not None:
                self.pattern = "{}:{}".format(*parse_pattern(self.pattern))
        for name in ("calib_samples", "calib_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")

    @property
    def sparsity(self) -> float:
        """Target fraction of zero weights in every pruned matrix (0 when not pruned)."""
        if self.pattern is not None:
            n, m = parse_pattern(self.pattern)
            return n / m
        return self.ratio or 0.0

    @property
    def calibrated(self) -> bool:
        """SparseGPT and Wanda read activations of calibration data; magnitude and int8 do not."""
        return self.prune in ("sparsegpt", "wanda")

    @property
    def label(self) -> str:
        """Short form, e.g. ``sparsegpt-85%``, ``magnitude-2:4+int8``, ``int8``."""
        parts = []
        if self.prune != "none":
            parts.append(f"{self.prune}-{self.pattern}" if self.pattern else f"{self.prune}-{self.ratio * 100:g}%")
        if self.int8:
            parts.append("int8")
        return "+".join(parts)

    @property
    def spec(self) -> str:
        """The short form `parse` reads back, e.g. ``sparsegpt:0.85+int8``."""
        parts = [f"{self.prune}:{self.pattern or f'{self.ratio:g}'}"] if self.prune != "none" else []
        return "+".join(parts + (["int8"] if self.int8 else []))

    @property
    def key(self) -> str:
        """Folder-safe name covering every setting that changes the weights."""
        key = self.label.replace("%", "pct").replace(":", "of").replace("+", "_")
        if self.calibrated:
            key += f"_{self.calib_data}-{self.calib_samples}x{self.calib_length}-s{self.calib_seed}"
        return re.sub(r"[^A-Za-z0-9_.-]", "-", key)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def parse(cls, text: str, **calibration) -> "CompressionConfig":
        """Parse the short form used by `--compress`: ``sparsegpt:0.85``, ``wanda:2:4``, ``magnitude:0.5+int8``, ``int8``."""
        prune, ratio, pattern, int8 = "none", None, None, False
        for part in (p.strip() for p in text.split("+")):
            if part == "int8":
                int8 = True
                continue
            method, _, amount = part.partition(":")
            if method not in PRUNE_METHODS[1:] or not amount:
                raise ConfigError(
                    f"--compress {text!r}: each part is METHOD:RATIO, METHOD:N:M or int8 "
                    f"(METHOD one of {', '.join(PRUNE_METHODS[1:])}), e.g. sparsegpt:0.85+int8"
                )
            prune = method
            if ":" in amount:
                pattern = amount
            else:
                try:
                    ratio = float(amount)
                except ValueError:
                    raise ConfigError(f"--compress {text!r}: {amount!r} is neither a ratio nor an N:M pattern") from None
        return cls(prune=prune, ratio=ratio, pattern=pattern, int8=int8, **calibration)


def compression_from(spec: str | None, data: str = "dolly", seed: int = 0) -> CompressionConfig | None:
    """`--compress` text -> `CompressionConfig` (None when not given), calibrated on `data`'s train split."""
    return CompressionConfig.parse(spec, calib_data=data, calib_seed=seed) if spec else None
